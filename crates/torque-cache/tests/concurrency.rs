//! Two threads hammering one cache: no lost inserts, the bound holds, every
//! departure is reported once, and the statistics add up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use torque_cache::{LocalCache, Policy, RemovalCause};

mod common;
use common::POLICIES;

type Log = Arc<Mutex<Vec<(u64, RemovalCause)>>>;

fn cache(policy: Policy, capacity: u64, log: &Log) -> LocalCache<u64, u64> {
    let sink = Arc::clone(log);
    LocalCache::builder()
        .max_capacity(capacity)
        .policy(policy)
        .shards(8)
        .eviction_listener(move |k: &u64, _: &u64, c| sink.lock().unwrap().push((*k, c)))
        .build()
        .unwrap()
}

/// Thread `t` writes keys `t, t + 2, t + 4, ...` (disjoint), reading
/// earlier keys in between; returns the number of reads done.
fn hammer(cache: &LocalCache<u64, u64>, t: u64, writes: u64) -> u64 {
    let mut reads = 0;
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
    for i in 0..writes {
        let key = i * 2 + t;
        cache.insert(key, key * 10);
        // In-flight writes may overshoot the bound by their own weight only.
        assert!(cache.weighted_size() <= cache.max_capacity() + 2);
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let probe = x % (i * 2 + 2);
            if let Some(v) = cache.get(&probe) {
                assert_eq!(v, probe * 10, "a read returned another key's value");
            }
            reads += 1;
        }
    }
    reads
}

fn check(policy: Policy, capacity: u64, writes: u64) {
    let log = Log::default();
    let cache = cache(policy, capacity, &log);
    let reads: u64 = std::thread::scope(|s| {
        let a = s.spawn(|| hammer(&cache, 0, writes));
        let b = s.spawn(|| hammer(&cache, 1, writes));
        a.join().unwrap() + b.join().unwrap()
    });
    let total = 2 * writes;
    let log = log.lock().unwrap();
    // Every key is either still cached or was evicted, exactly once.
    let mut evicted: HashMap<u64, usize> = HashMap::new();
    for (k, cause) in log.iter() {
        assert_eq!(*cause, RemovalCause::Capacity, "{policy:?}");
        *evicted.entry(*k).or_default() += 1;
    }
    assert!(
        evicted.values().all(|&n| n == 1),
        "{policy:?}: a key left twice"
    );
    for k in 0..total {
        let cached = cache.contains_key(&k);
        assert!(
            cached ^ evicted.contains_key(&k),
            "{policy:?}: key {k} lost or duplicated"
        );
    }
    let len = cache.len() as u64;
    assert_eq!(len + evicted.len() as u64, total, "{policy:?}");
    assert!(cache.weighted_size() <= capacity, "{policy:?}");
    assert_eq!(cache.weighted_size(), len);
    if capacity >= total {
        assert_eq!(len, total, "{policy:?}: evicted while not full");
    } else {
        // Racing evictors may free one entry more than needed, each.
        assert!(len + 2 >= capacity, "{policy:?}: {len} of {capacity}");
    }
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, reads, "{policy:?}");
    assert_eq!(stats.inserts, total, "{policy:?}");
    assert_eq!(stats.evictions.capacity, evicted.len() as u64, "{policy:?}");
    assert_eq!(stats.evictions.total(), log.len() as u64, "{policy:?}");
}

#[test]
fn two_threads_no_lost_inserts_when_everything_fits() {
    for policy in POLICIES {
        check(policy, 20_000, 5_000);
    }
}

#[test]
fn two_threads_bound_holds_and_evictions_add_up() {
    for policy in POLICIES {
        check(policy, 500, 5_000);
    }
}

#[test]
#[ignore = "long stress run; CI runs it with --ignored stress_"]
fn stress_two_threads_many_writes() {
    for policy in POLICIES {
        check(policy, 1_000, 200_000);
        check(policy, 500_000, 200_000);
    }
}

/// Loads, writes, removals, clears and a listener that reads the cache back,
/// all at once from two threads: nothing deadlocks (the listener runs after
/// the shard lock is released) and the books balance at the end.
#[test]
fn mixed_operations_with_a_reentrant_listener_do_not_deadlock() {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    let handle: Arc<OnceLock<LocalCache<u64, u64>>> = Arc::default();
    let departures = Arc::new(AtomicU64::new(0));
    let (h, d) = (Arc::clone(&handle), Arc::clone(&departures));
    let cache: LocalCache<u64, u64> = LocalCache::builder()
        .max_capacity(64)
        .shards(4)
        .eviction_listener(move |k: &u64, _: &u64, _| {
            d.fetch_add(1, Ordering::Relaxed);
            if let Some(cache) = h.get() {
                // Re-entering the cache from the listener must be safe.
                let _ = cache.contains_key(k);
                let _ = cache.get(&(k ^ 1));
            }
        })
        .build()
        .unwrap();
    assert!(handle.set(cache.clone()).is_ok());
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let cache = &cache;
            s.spawn(move || {
                let mut x = 0x2545_f491_4f6c_dd1du64 ^ t;
                for i in 0..20_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = x % 256;
                    match x % 100 {
                        0 => cache.invalidate_all(),
                        1..=5 => {
                            cache.remove(&key);
                        }
                        6..=40 => cache.insert(key, i),
                        41..=70 => {
                            let v = cache.get_or_load(key, || {
                                if key.is_multiple_of(7) {
                                    Err("odd")
                                } else {
                                    Ok(key)
                                }
                            });
                            assert!(v.is_ok() || key.is_multiple_of(7));
                        }
                        _ => {
                            cache.get(&key);
                        }
                    }
                }
            });
        }
    });
    assert!(cache.weighted_size() <= 64);
    let s = cache.stats();
    assert_eq!(s.evictions.total(), departures.load(Ordering::Relaxed));
    // Everything that went in either left (and was reported) or is still here.
    let stored = s.inserts - s.evictions.total();
    assert_eq!(stored, cache.len() as u64);
}

/// Reads under the shared lock racing with writes, evictions and expiry:
/// every entry that leaves is reported exactly once, and the statistics
/// count every read.
#[test]
fn shared_reads_with_writes_and_expiry_report_each_departure_once() {
    use std::time::Duration;
    use torque_cache::MockClock;

    for policy in [Policy::Adaptive, Policy::Fifo, Policy::Ttl] {
        let log = Log::default();
        let sink = Arc::clone(&log);
        let clock = MockClock::new();
        let cache: LocalCache<u64, u64> = LocalCache::builder()
            .max_capacity(300)
            .policy(policy)
            .shards(4)
            .time_to_live(Duration::from_secs(20))
            .clock(clock.clone())
            .eviction_listener(move |k: &u64, v: &u64, c| {
                sink.lock().unwrap().push((k << 32 | v, c));
            })
            .build()
            .unwrap();
        let reads: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2u64)
                .map(|t| {
                    let (cache, clock) = (&cache, &clock);
                    s.spawn(move || {
                        let mut reads = 0;
                        for i in 0..30_000u64 {
                            let key = (i * 31 + t * 2) % 1_000;
                            if i % 4 == t {
                                // Unique values, so a departure names its write.
                                cache.insert(key, i * 2 + t);
                            } else {
                                if let Some(v) = cache.get(&key) {
                                    let (i, t) = (v / 2, v % 2);
                                    assert_eq!(
                                        (i * 31 + t * 2) % 1_000,
                                        key,
                                        "another key's value"
                                    );
                                }
                                reads += 1;
                            }
                            if t == 0 && i % 1_500 == 0 {
                                clock.advance(Duration::from_secs(30));
                            }
                        }
                        reads
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let log = log.lock().unwrap();
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for (kv, _) in log.iter() {
            *seen.entry(*kv).or_default() += 1;
        }
        assert!(
            seen.values().all(|&n| n == 1),
            "{policy:?}: a write was reported twice"
        );
        let stats = cache.stats();
        assert_eq!(stats.hits + stats.misses, reads, "{policy:?}");
        assert_eq!(stats.evictions.total(), log.len() as u64, "{policy:?}");
        assert_eq!(
            stats.inserts - stats.evictions.total(),
            cache.len() as u64,
            "{policy:?}: writes unaccounted for"
        );
        assert!(stats.evictions.expired > 0, "{policy:?}: nothing expired");
        assert!(stats.evictions.capacity > 0, "{policy:?}: nothing evicted");
    }
}
