//! Zero capacity, weights of zero or more than the capacity, a zero
//! time-to-live: each has defined behaviour and never panics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use torque_cache::{LocalCache, MockClock, Policy, RemovalCause};

type Log = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

fn listener(log: &Log) -> impl Fn(&u32, &u32, RemovalCause) + Send + Sync + 'static {
    let log = Arc::clone(log);
    move |k, v, c| log.lock().unwrap().push((*k, *v, c))
}

#[test]
fn zero_capacity_stores_nothing_but_loads_still_work() {
    for policy in [Policy::Lru, Policy::Adaptive, Policy::Ttl] {
        let log = Log::default();
        let cache = LocalCache::builder()
            .max_capacity(0)
            .policy(policy)
            .eviction_listener(listener(&log))
            .build()
            .unwrap();
        cache.insert(1, 1);
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.len(), 0);
        assert_eq!(*log.lock().unwrap(), vec![(1, 1, RemovalCause::Capacity)]);
        let v = cache.get_or_load(2, || Ok::<_, ()>(20));
        assert_eq!(v, Ok(20));
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.stats().evictions.capacity, 2);
    }
}

#[test]
fn zero_weight_counts_as_one() {
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(10)
        .weigher(|_, _| 0)
        .build()
        .unwrap();
    for k in 0..100 {
        cache.insert(k, k);
    }
    assert_eq!(cache.len(), 10);
    assert_eq!(cache.weighted_size(), 10);
}

#[test]
fn entry_heavier_than_capacity_is_rejected_loudly() {
    let log = Log::default();
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(100)
        .policy(Policy::Lru)
        .weigher(|_, v| *v)
        .eviction_listener(listener(&log))
        .build()
        .unwrap();
    cache.insert(1, 50);
    cache.insert(2, 10);
    // Too heavy, and replacing key 1: the old value must not linger.
    cache.insert(1, u32::MAX);
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.get(&2), Some(10), "nothing else was evicted for it");
    assert_eq!(cache.weighted_size(), 10);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (1, 50, RemovalCause::Replaced),
            (1, u32::MAX, RemovalCause::Capacity)
        ]
    );
    // Exactly the capacity fits, evicting the rest (under Lru; the
    // adaptive policy may refuse a newcomer that heavy and unpopular).
    cache.insert(3, 100);
    assert_eq!(cache.get(&3), Some(100));
    assert_eq!(cache.weighted_size(), 100);
}

#[test]
fn zero_ttl_expires_on_arrival() {
    let log = Log::default();
    let clock = MockClock::new();
    let cache = LocalCache::builder()
        .max_capacity(10)
        .time_to_live(Duration::ZERO)
        .clock(clock)
        .eviction_listener(listener(&log))
        .build()
        .unwrap();
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.len(), 0);
    assert_eq!(*log.lock().unwrap(), vec![(1, 1, RemovalCause::Expired)]);

    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    cache.insert(5, 5);
    cache.insert_with_ttl(5, 6, Duration::ZERO);
    assert_eq!(cache.get(&5), None);
    assert_eq!(cache.stats().evictions.expired, 1);
    assert_eq!(cache.stats().evictions.replaced, 1);
}

#[test]
fn zero_tti_expires_on_arrival_and_evicts_nothing() {
    // A zero time-to-idle means an entry is idle too long the moment it is
    // written, as a zero time-to-live means it is too old.
    let log = Log::default();
    let clock = MockClock::new();
    let cache = LocalCache::builder()
        .max_capacity(2)
        .shards(1)
        .policy(Policy::Lru)
        .time_to_idle(Duration::ZERO)
        .clock(clock)
        .eviction_listener(listener(&log))
        .build()
        .unwrap();
    cache.insert(1, 1);
    // As with a zero time-to-live: refused on arrival, and said so at once.
    assert_eq!(cache.weighted_size(), 0, "nothing is stored");
    assert_eq!(*log.lock().unwrap(), vec![(1, 1, RemovalCause::Expired)]);
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.stats().evictions.capacity, 0);
}

#[test]
fn huge_durations_saturate_instead_of_overflowing() {
    let clock = MockClock::new();
    let cache = LocalCache::builder()
        .max_capacity(10)
        .time_to_live(Duration::MAX)
        .time_to_idle(Duration::MAX)
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    clock.advance(Duration::from_secs(1 << 30));
    assert_eq!(cache.get(&1), Some(1));
    cache.insert_with_ttl(2, 2, Duration::MAX);
    assert_eq!(cache.get(&2), Some(2));
}

#[test]
fn regression_max_capacity_u64_max_builds_and_works_for_every_policy() {
    // "The most the cache may hold" given as u64::MAX (no bound): the
    // adaptive policy's protected share multiplied the shard's capacity by
    // 90 and overflowed (a panic in debug builds, a garbage share in
    // release).
    for policy in [
        Policy::Lru,
        Policy::Lfu,
        Policy::Fifo,
        Policy::Ttl,
        Policy::Adaptive,
    ] {
        for shards in [1, 8] {
            let cache: LocalCache<u32, u32> = LocalCache::builder()
                .max_capacity(u64::MAX)
                .policy(policy)
                .shards(shards)
                .build()
                .unwrap();
            for k in 0..100 {
                cache.insert(k, k);
            }
            assert_eq!(cache.len(), 100, "{policy:?}");
            let weighted: LocalCache<u32, u32> = LocalCache::builder()
                .max_capacity(u64::MAX)
                .policy(policy)
                .shards(shards)
                .weigher(|_, _| u32::MAX)
                .build()
                .unwrap();
            for k in 0..100 {
                weighted.insert(k, k);
            }
            assert_eq!(weighted.weighted_size(), 100 * u64::from(u32::MAX));
        }
    }
    let cache: LocalCache<u32, u32> = LocalCache::new(u64::MAX);
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
}
