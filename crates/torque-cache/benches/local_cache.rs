//! Latency of the basic operations of `LocalCache` (single thread): a read
//! that hits, a read that misses, and an insert into a full cache; and what
//! a cache with expiry pays per clock read, `Instant` against the
//! time-stamp counter it reads instead (`clock` group).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use torque_cache::{LocalCache, Policy};

const CAPACITY: u64 = 10_000;

fn policies() -> [(&'static str, Policy); 5] {
    [
        ("adaptive", Policy::Adaptive),
        ("lru", Policy::Lru),
        ("fifo", Policy::Fifo),
        ("lfu", Policy::Lfu),
        ("ttl", Policy::Ttl),
    ]
}

fn filled(policy: Policy) -> LocalCache<u64, u64> {
    let cache = LocalCache::builder()
        .max_capacity(CAPACITY)
        .policy(policy)
        .build()
        .expect("valid config");
    for k in 0..CAPACITY {
        cache.insert(k, k);
    }
    cache
}

fn latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("local_cache");
    for (name, policy) in policies() {
        let cache = filled(policy);
        let mut k = 0u64;
        group.bench_function(BenchmarkId::new("get_hit", name), |b| {
            b.iter(|| {
                k = (k + 7919) % CAPACITY;
                black_box(cache.get(&k))
            })
        });
        let mut k = CAPACITY;
        group.bench_function(BenchmarkId::new("get_miss", name), |b| {
            b.iter(|| {
                k += 1;
                black_box(cache.get(&k))
            })
        });
        let mut k = CAPACITY;
        group.bench_function(BenchmarkId::new("insert_evicting", name), |b| {
            b.iter(|| {
                k += 1;
                cache.insert(black_box(k), k);
            })
        });
    }
    group.finish();
}

/// Nanoseconds since an origin, as a cache with expiry reads them on every
/// `get` and `insert`: through `Instant` (as with a custom [`Clock`]) and
/// through the time-stamp counter (the default [`SystemClock`]).
///
/// [`Clock`]: torque_cache::Clock
/// [`SystemClock`]: torque_cache::SystemClock
fn clock(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock");
    let origin = std::time::Instant::now();
    group.bench_function("instant_since_origin", |b| {
        b.iter(|| {
            u64::try_from(
                std::time::Instant::now()
                    .saturating_duration_since(black_box(origin))
                    .as_nanos(),
            )
            .unwrap_or(u64::MAX)
        })
    });
    let counter = quanta::Clock::new();
    let start = counter.raw();
    group.bench_function("quanta_counter_since_origin", |b| {
        b.iter(|| counter.delta_as_nanos(black_box(start), counter.raw()))
    });
    group.finish();
}

criterion_group!(benches, latency, clock);
criterion_main!(benches);
