//! Latency of the basic operations of `LocalCache` (single thread): a read
//! that hits, a read that misses, and an insert into a full cache.

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

criterion_group!(benches, latency);
criterion_main!(benches);
