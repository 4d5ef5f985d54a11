//! Concurrent throughput, same run, same trace: torque-cache (Adaptive and
//! Lru) vs quick_cache, moka (sync), `Mutex<lru::LruCache>` and dashmap
//! without eviction (the upper bound of a sharded map). 90 % reads, 10 %
//! writes, Zipf(1.0) keys over 100k, capacity 10k, 1 and 2 threads; each
//! thread replays its own seeded trace. Every cache uses its default hasher.
//!
//! A second group runs the same workload with a one-hour time-to-live on
//! every entry (nothing expires during a run: it measures what keeping
//! deadlines costs), for the caches that have one: torque-cache and moka.

mod cache_traces;
#[path = "common/contenders.rs"]
mod contenders;

use std::num::NonZeroUsize;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use parking_lot::Mutex;
use torque_cache::{LocalCache, Policy};

use cache_traces::{Rng, zipf_trace};
use contenders::Contender;

const KEYS: usize = 100_000;
const CAPACITY: usize = 10_000;
const TRACE: usize = 1 << 16;

fn ours(policy: Policy) -> Box<dyn Contender> {
    Box::new(
        LocalCache::<u64, u64>::builder()
            .max_capacity(CAPACITY as u64)
            .policy(policy)
            .build()
            .expect("valid config"),
    )
}

/// The time-to-live of the second group: longer than any run.
const TTL: Duration = Duration::from_secs(3600);

fn contenders_with_ttl() -> Contenders {
    vec![
        (
            "torque_adaptive",
            Box::new(
                LocalCache::<u64, u64>::builder()
                    .max_capacity(CAPACITY as u64)
                    .time_to_live(TTL)
                    .build()
                    .expect("valid config"),
            ),
        ),
        (
            "moka_sync",
            Box::new(
                moka::sync::Cache::<u64, u64>::builder()
                    .max_capacity(CAPACITY as u64)
                    .time_to_live(TTL)
                    .build(),
            ),
        ),
    ]
}

/// Named caches of one benchmark group.
type Contenders = Vec<(&'static str, Box<dyn Contender>)>;

fn contenders() -> Contenders {
    vec![
        ("torque_adaptive", ours(Policy::Adaptive)),
        ("torque_lru", ours(Policy::Lru)),
        (
            "quick_cache",
            Box::new(quick_cache::sync::Cache::<u64, u64>::new(CAPACITY)),
        ),
        (
            "moka_sync",
            Box::new(moka::sync::Cache::<u64, u64>::new(CAPACITY as u64)),
        ),
        (
            "mutex_lru",
            Box::new(Mutex::new(lru::LruCache::<u64, u64>::new(
                NonZeroUsize::new(CAPACITY).expect("non-zero"),
            ))),
        ),
        ("dashmap_unbounded", Box::new(DashMap::<u64, u64>::new())),
    ]
}

/// Per thread: keys, and which requests are writes (every tenth on average).
fn workload(thread: u64) -> Vec<(u64, bool)> {
    let keys = zipf_trace(KEYS, 1.0, TRACE, 0xc0ffee + thread);
    let mut rng = Rng::new(0xfeed + thread);
    keys.into_iter()
        .map(|k| (k, rng.next_u64().is_multiple_of(10)))
        .collect()
}

fn run(cache: &dyn Contender, work: &[(u64, bool)], ops: u64) {
    let mask = work.len() - 1;
    for i in 0..ops as usize {
        let (k, write) = work[i & mask];
        if write {
            cache.insert(k, k);
        } else if cache.get(k).is_none() {
            // Demand fill keeps the hit ratio realistic.
            cache.insert(k, k);
        }
    }
}

fn throughput(c: &mut Criterion) {
    group(c, "cache_throughput_90r10w_zipf1.0", contenders);
    group(
        c,
        "cache_throughput_90r10w_zipf1.0_ttl1h",
        contenders_with_ttl,
    );
}

fn group(c: &mut Criterion, group_name: &str, contenders: fn() -> Contenders) {
    let mut group = c.benchmark_group(group_name);
    let works: Vec<Vec<(u64, bool)>> = (0..2).map(workload).collect();
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        for (name, cache) in contenders() {
            // Warm: replay each thread's trace once.
            for w in &works[..threads] {
                run(cache.as_ref(), w, TRACE as u64);
            }
            group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| {
                    let start = Barrier::new(threads + 1);
                    std::thread::scope(|s| {
                        for w in &works[..threads] {
                            let (cache, start) = (cache.as_ref(), &start);
                            s.spawn(move || {
                                start.wait();
                                run(cache, w, iters);
                            });
                        }
                        start.wait();
                        let t0 = Instant::now();
                        // Scoped threads are joined when the scope ends.
                        t0
                    })
                    .elapsed()
                    .max(Duration::from_nanos(1))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
