//! Time-to-live, time-to-idle, per-entry expiry and proactive freeing, on a
//! mock clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use torque_cache::{LocalCache, MockClock, Policy, RemovalCause};

mod common;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn time_to_live_counts_from_the_write() {
    let clock = MockClock::new();
    let cache = LocalCache::builder()
        .max_capacity(10)
        .time_to_live(secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    clock.advance(secs(9));
    assert_eq!(cache.get(&1), Some(1), "reads do not extend a ttl");
    clock.advance(secs(1));
    assert_eq!(cache.get(&1), None);
    assert!(!cache.contains_key(&1));
    assert_eq!(cache.stats().evictions.expired, 1);
}

#[test]
fn time_to_idle_counts_from_the_last_use() {
    let clock = MockClock::new();
    let cache = LocalCache::builder()
        .max_capacity(10)
        .time_to_idle(secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    for _ in 0..5 {
        clock.advance(secs(9));
        assert_eq!(cache.get(&1), Some(1));
    }
    clock.advance(secs(10));
    assert_eq!(cache.get(&1), None);
}

#[test]
fn per_entry_ttl_overrides_the_cache_wide_one() {
    let clock = MockClock::new();
    let cache = LocalCache::builder()
        .max_capacity(10)
        .time_to_live(secs(100))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert_with_ttl(1, 1, secs(5));
    cache.insert(2, 2);
    clock.advance(secs(5));
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.get(&2), Some(2));
    // Per-entry expiry on a cache built without any.
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(10)
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    cache.insert_with_ttl(2, 2, secs(1));
    clock.advance(secs(1));
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.get(&2), None);
}

#[test]
fn rewriting_an_entry_restarts_its_ttl() {
    let clock = MockClock::new();
    let cache = LocalCache::builder()
        .max_capacity(10)
        .time_to_live(secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    clock.advance(secs(8));
    cache.insert(1, 2);
    clock.advance(secs(8));
    assert_eq!(cache.get(&1), Some(2));
    clock.advance(secs(2));
    assert_eq!(cache.get(&1), None);
}

#[test]
fn expired_entries_are_freed_without_being_read() {
    // moka #72/#590: expired entries must not sit in memory until touched.
    let clock = MockClock::new();
    let expired = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&expired);
    let cache = LocalCache::builder()
        .max_capacity(10_000)
        .shards(8)
        .time_to_live(secs(10))
        .clock(clock.clone())
        .eviction_listener(move |_: &u32, _: &u32, cause| {
            if cause == RemovalCause::Expired {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build()
        .unwrap();
    for k in 0..1000 {
        cache.insert(k, k);
    }
    clock.advance(secs(11));
    // Writes of other keys (never reading the old ones) free them shard by
    // shard: each write sweeps its own shard and, now and then, a neighbour.
    for k in 1000..1000 + 64 * 8 * 2 {
        cache.insert(k, k);
    }
    assert_eq!(expired.load(Ordering::Relaxed), 1000);
    assert_eq!(cache.weighted_size(), 64 * 8 * 2);
}

#[test]
fn run_pending_tasks_frees_everything_due() {
    let clock = MockClock::new();
    let cache = LocalCache::builder()
        .max_capacity(100)
        .time_to_idle(secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    for k in 0..50 {
        cache.insert(k, k);
    }
    clock.advance(secs(5));
    for k in 0..10 {
        cache.get(&k);
    }
    clock.advance(secs(6));
    cache.run_pending_tasks();
    assert_eq!(cache.weighted_size(), 10, "the ten read entries stay");
    assert_eq!(cache.len(), 10);
}

#[test]
fn ttl_policy_evicts_the_entry_nearest_expiry() {
    let clock = MockClock::new();
    let cache = LocalCache::builder()
        .max_capacity(3)
        .shards(1)
        .policy(Policy::Ttl)
        .clock(clock)
        .build()
        .unwrap();
    cache.insert_with_ttl(1, 1, secs(30));
    cache.insert_with_ttl(2, 2, secs(10));
    cache.insert(3, 3);
    cache.insert_with_ttl(4, 4, secs(20));
    assert!(!cache.contains_key(&2));
    cache.insert(5, 5);
    assert!(!cache.contains_key(&4));
    cache.insert(6, 6);
    assert!(!cache.contains_key(&1));
    assert!(cache.contains_key(&3) && cache.contains_key(&5) && cache.contains_key(&6));
}

/// Reads of Adaptive, Fifo and Ttl (without time-to-idle) run under the
/// shard's shared lock, where an expired entry cannot be freed: it must still
/// never be returned, while other threads read and the clock moves.
#[test]
fn regression_expired_entries_never_returned_by_shared_reads() {
    use std::sync::atomic::AtomicBool;

    for policy in [Policy::Adaptive, Policy::Fifo, Policy::Ttl] {
        for idle in [false, true] {
            let clock = MockClock::new();
            let mut builder = LocalCache::builder()
                .max_capacity(1_000)
                .policy(policy)
                .shards(4)
                .clock(clock.clone());
            builder = if idle {
                builder.time_to_idle(secs(10))
            } else {
                builder.time_to_live(secs(10))
            };
            let cache: LocalCache<u64, u64> = builder.build().unwrap();
            for k in 0..256 {
                cache.insert(k, k);
            }
            let expired = AtomicBool::new(false);
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    let (cache, expired) = (&cache, &expired);
                    s.spawn(move || {
                        for i in 0..20_000u64 {
                            // Read the flag first: once it is set, the clock
                            // is past every deadline, so any value is stale.
                            let after = expired.load(Ordering::Acquire);
                            let key = (i * 7 + t) % 256;
                            let v = cache.get(&key);
                            assert!(
                                !(after && v.is_some()),
                                "{policy:?} (idle {idle}): expired key {key} returned"
                            );
                        }
                    });
                }
                // Time-to-idle: reads keep entries alive until the clock
                // jumps past every possible deadline.
                clock.advance(secs(5));
                clock.advance(secs(100));
                expired.store(true, Ordering::Release);
            });
            assert_eq!(cache.len(), 0, "{policy:?}: expired entries not freed");
            assert_eq!(cache.stats().evictions.expired, 256, "{policy:?}");
        }
    }
}

#[test]
fn reads_check_deadlines_from_the_first_per_entry_ttl_on() {
    // Until an entry can expire, reads take a path without any expiry
    // checks; the first `insert_with_ttl` must switch every later read over.
    for policy in [Policy::Adaptive, Policy::Fifo, Policy::Lru] {
        let clock = MockClock::new();
        let cache: LocalCache<u32, u32> = LocalCache::builder()
            .max_capacity(10)
            .policy(policy)
            .clock(clock.clone())
            .build()
            .unwrap();
        cache.insert(1, 1);
        assert_eq!(cache.get(&1), Some(1));
        assert_eq!(cache.get(&3), None);
        cache.insert_with_ttl(2, 2, secs(1));
        assert_eq!(cache.get(&2), Some(2));
        clock.advance(secs(1));
        assert_eq!(cache.get(&2), None, "{policy:?}");
        assert_eq!(cache.get(&1), Some(1), "{policy:?}");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (3, 2), "{policy:?}");
        assert_eq!(stats.evictions.expired, 1, "{policy:?}");
    }
}

#[test]
fn regression_retain_never_shows_an_expired_entry_to_its_predicate() {
    // An expired entry is never returned: not by `retain`'s predicate
    // either, and it leaves as `Expired` (as `remove` reports it), not as
    // `Removed`.
    for policy in [
        Policy::Lru,
        Policy::Lfu,
        Policy::Fifo,
        Policy::Ttl,
        Policy::Adaptive,
    ] {
        let clock = MockClock::new();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let cache: LocalCache<u32, u32> = LocalCache::builder()
            .max_capacity(100)
            .policy(policy)
            .shards(1)
            .clock(clock.clone())
            .eviction_listener(move |k: &u32, v: &u32, c| sink.lock().unwrap().push((*k, *v, c)))
            .build()
            .unwrap();
        cache.insert_with_ttl(1, 10, secs(1));
        cache.insert_with_ttl(2, 20, secs(1));
        cache.insert(3, 30);
        clock.advance(secs(2));
        let mut seen = Vec::new();
        cache.retain(|k, _| {
            seen.push(*k);
            *k == 2
        });
        assert_eq!(
            seen,
            vec![3],
            "{policy:?}: the predicate saw expired entries"
        );
        let mut log = std::mem::take(&mut *log.lock().unwrap());
        log.sort_unstable_by_key(|e| e.0);
        assert_eq!(
            log,
            vec![
                (1, 10, RemovalCause::Expired),
                (2, 20, RemovalCause::Expired),
                (3, 30, RemovalCause::Removed),
            ],
            "{policy:?}"
        );
        assert_eq!(cache.len(), 0);
    }
}

#[test]
fn regression_invalidate_all_reports_expired_entries_as_expired() {
    let clock = MockClock::new();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(100)
        .time_to_idle(secs(5))
        .clock(clock.clone())
        .eviction_listener(move |k: &u32, v: &u32, c| sink.lock().unwrap().push((*k, *v, c)))
        .build()
        .unwrap();
    cache.insert(1, 10);
    cache.insert(2, 20);
    clock.advance(secs(4));
    assert_eq!(cache.get(&2), Some(20));
    clock.advance(secs(2));
    cache.invalidate_all();
    let mut log = std::mem::take(&mut *log.lock().unwrap());
    log.sort_unstable_by_key(|e| e.0);
    assert_eq!(
        log,
        vec![
            (1, 10, RemovalCause::Expired),
            (2, 20, RemovalCause::Removed)
        ]
    );
    let stats = cache.stats();
    assert_eq!((stats.evictions.expired, stats.evictions.removed), (1, 1));
}

#[test]
fn regression_an_expired_entry_in_another_shard_leaves_as_expired_not_for_capacity() {
    // A write over capacity whose own shard has nothing else to evict
    // evicts from the other shards, which it did without freeing their
    // expired entries first: an entry past its time-to-live was evicted as
    // `Capacity`, and counted so. Which shard a key lands in depends on
    // the hasher's random seed, so try enough fresh caches that the two
    // keys land apart in some (all alike: 2^-32).
    for policy in [Policy::Lru, Policy::Fifo, Policy::Ttl, Policy::Adaptive] {
        for _ in 0..32 {
            let clock = MockClock::new();
            let log = Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = Arc::clone(&log);
            let cache: LocalCache<u32, u32> = LocalCache::builder()
                .max_capacity(1)
                .shards(2)
                .policy(policy)
                .time_to_live(secs(10))
                .clock(clock.clone())
                .eviction_listener(move |k: &u32, v: &u32, c| {
                    sink.lock().unwrap().push((*k, *v, c))
                })
                .build()
                .unwrap();
            cache.insert(1, 10);
            clock.advance(secs(11));
            cache.insert(2, 20);
            let log = std::mem::take(&mut *log.lock().unwrap());
            assert_eq!(log, vec![(1, 10, RemovalCause::Expired)], "{policy:?}");
            let stats = cache.stats();
            assert_eq!(
                (stats.evictions.expired, stats.evictions.capacity),
                (1, 0),
                "{policy:?}"
            );
            assert_eq!(cache.get(&2), Some(20), "{policy:?}");
        }
    }
}

#[test]
fn regression_a_full_cache_frees_expired_entries_of_other_shards_before_evicting_live_ones() {
    // A write to a full cache swept its own shard and, with nothing
    // expired there, evicted one of that shard's live entries for
    // capacity, while other shards it never visited still held entries
    // past their time-to-live: the cache was full only of the dead.
    // Which shards the keys land in depends on the hasher's random seed:
    // several fresh caches per policy.
    for policy in [
        Policy::Lru,
        Policy::Fifo,
        Policy::Lfu,
        Policy::Ttl,
        Policy::Adaptive,
    ] {
        for _ in 0..16 {
            let clock = MockClock::new();
            let (cache, log) = full_cache_of_eight_shards(policy, &clock);
            for k in 0..32 {
                cache.insert_with_ttl(k, k, secs(5));
            }
            for k in 100..132 {
                cache.insert_with_ttl(k, k, secs(1000));
            }
            assert_eq!(
                cache.weighted_size(),
                64,
                "{policy:?}: full, nothing evicted yet"
            );
            clock.advance(secs(6));
            for k in 200..232 {
                cache.insert_with_ttl(k, k, secs(1000));
            }
            let log = std::mem::take(&mut *log.lock().unwrap());
            let capacity: Vec<u32> = log
                .iter()
                .filter(|(_, c)| *c == RemovalCause::Capacity)
                .map(|(k, _)| *k)
                .collect();
            assert_eq!(
                capacity,
                Vec::<u32>::new(),
                "{policy:?}: live entries evicted while 32 expired ones were held"
            );
            for k in (100..132).chain(200..232) {
                assert!(cache.contains_key(&k), "{policy:?}: {k} lost");
            }
            assert_eq!(cache.stats().evictions.capacity, 0, "{policy:?}");
        }
    }
}

/// What a cache's listener heard: key and cause, in order.
type Log = Arc<std::sync::Mutex<Vec<(u32, RemovalCause)>>>;

/// A cache of 64 entries in 8 shards on `clock`, and its listener's log.
fn full_cache_of_eight_shards(policy: Policy, clock: &MockClock) -> (LocalCache<u32, u32>, Log) {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let cache = LocalCache::builder()
        .max_capacity(64)
        .shards(8)
        .policy(policy)
        .clock(clock.clone())
        .eviction_listener(move |k: &u32, _: &u32, c| sink.lock().unwrap().push((*k, c)))
        .build()
        .unwrap();
    (cache, log)
}

#[test]
fn a_full_cache_frees_expired_entries_of_other_shards_round_after_round() {
    // A write to a full cache learns from one cache-wide lower bound on
    // the shards' earliest timers that nothing is due elsewhere. Each
    // round's sweeps raise that bound past the timers they fired, and the
    // next round's writes, with earlier timers than the long-lived
    // entries' in their shards, must lower it again: otherwise their
    // expired entries stay hidden and live ones are evicted for them.
    for policy in [Policy::Lru, Policy::Adaptive] {
        for _ in 0..8 {
            let clock = MockClock::new();
            let (cache, log) = full_cache_of_eight_shards(policy, &clock);
            for k in 1000..1032 {
                cache.insert_with_ttl(k, k, secs(100_000));
            }
            for round in 0..6 {
                for k in 0..32 {
                    cache.insert_with_ttl(round * 100 + k, k, secs(5 + u64::from(round)));
                }
                assert_eq!(cache.weighted_size(), 64, "{policy:?}, round {round}");
                clock.advance(secs(6 + u64::from(round)));
            }
            let log = std::mem::take(&mut *log.lock().unwrap());
            assert_eq!(log.len(), 5 * 32, "{policy:?}: {log:?}");
            assert!(
                log.iter().all(|(_, c)| *c == RemovalCause::Expired),
                "{policy:?}: live entries evicted while expired ones were held: {log:?}"
            );
        }
    }
}

#[test]
fn a_reused_slot_frees_its_new_entry_at_the_new_entrys_deadline() {
    // A slot keeps its timer when its entry leaves, for the next entry of
    // the slot to reuse if that one expires no earlier; the timer re-arms
    // when it fires. Whatever the slot's history, the new entry must be
    // freed, proactively, at its own deadline: not before (the old
    // timer), not never (a timer that fired while the slot was empty, or
    // that freed the slot's expired entry, is gone).
    type History = fn(&LocalCache<u32, u32>, &MockClock);
    let histories: [(&str, History); 4] = [
        ("removed before its timer fired", |cache, _| {
            cache.insert_with_ttl(1, 1, secs(5));
            cache.remove(&1);
        }),
        ("removed, its timer fired while empty", |cache, clock| {
            cache.insert_with_ttl(1, 1, secs(5));
            cache.remove(&1);
            clock.advance(secs(6));
            cache.run_pending_tasks();
        }),
        ("expired and freed by a sweep", |cache, clock| {
            cache.insert_with_ttl(1, 1, secs(5));
            clock.advance(secs(6));
            cache.run_pending_tasks();
        }),
        (
            "removed, with a later deadline than the new entry",
            |cache, _| {
                cache.insert_with_ttl(1, 1, secs(1000));
                cache.remove(&1);
            },
        ),
    ];
    for policy in [Policy::Lru, Policy::Fifo, Policy::Ttl, Policy::Adaptive] {
        for (history, make) in histories {
            for ttl in [3, 8] {
                let clock = MockClock::new();
                let log = Arc::new(std::sync::Mutex::new(Vec::new()));
                let sink = Arc::clone(&log);
                let cache: LocalCache<u32, u32> = LocalCache::builder()
                    .max_capacity(10)
                    .shards(1)
                    .policy(policy)
                    .clock(clock.clone())
                    .eviction_listener(move |k: &u32, _: &u32, c| {
                        sink.lock().unwrap().push((*k, c));
                    })
                    .build()
                    .unwrap();
                make(&cache, &clock);
                log.lock().unwrap().clear();
                // One slot: the new entry reuses the one the history used.
                cache.insert_with_ttl(2, 2, secs(ttl));
                let case = format!("{policy:?}, {history}, ttl {ttl}");
                clock.advance(secs(ttl - 1));
                cache.run_pending_tasks();
                assert_eq!(cache.get(&2), Some(2), "{case}: expired early");
                assert!(log.lock().unwrap().is_empty(), "{case}");
                clock.advance(secs(1));
                cache.run_pending_tasks();
                assert_eq!(
                    *log.lock().unwrap(),
                    [(2, RemovalCause::Expired)],
                    "{case}: not freed at its deadline"
                );
                assert_eq!(cache.weighted_size(), 0, "{case}");
            }
        }
    }
}

/// A cache whose [`torque_cache::Expiry`] gives odd values 5 s, even ones
/// the cache-wide time-to-live (100 s), and 0 a zero time-to-live.
fn with_expiry(clock: &MockClock) -> (LocalCache<u32, u32>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let cache = LocalCache::builder()
        .max_capacity(100)
        .time_to_live(secs(100))
        .expiry(move |_: &u32, v: &u32| {
            counted.fetch_add(1, Ordering::Relaxed);
            match v {
                0 => Some(Duration::ZERO),
                v if v % 2 == 1 => Some(secs(5)),
                _ => None,
            }
        })
        .clock(clock.clone())
        .build()
        .unwrap();
    (cache, calls)
}

#[test]
fn an_expiry_sets_each_inserted_entrys_time_to_live() {
    let clock = MockClock::new();
    let (cache, calls) = with_expiry(&clock);
    cache.insert(1, 1);
    cache.insert(2, 2);
    // An explicit time-to-live wins, and the expiry is not asked.
    cache.insert_with_ttl(3, 3, secs(50));
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    clock.advance(secs(5));
    assert_eq!(cache.get(&1), None, "the expiry's 5 s");
    assert_eq!(cache.get(&2), Some(2), "None: the cache-wide 100 s");
    assert_eq!(cache.get(&3), Some(3), "insert_with_ttl's 50 s");
    // A rewrite asks again: 2 becomes odd, so 5 s from now.
    cache.insert(2, 5);
    clock.advance(secs(5));
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.get(&3), Some(3));
    clock.advance(secs(40));
    assert_eq!(cache.get(&3), None);
}

#[test]
fn an_expiry_of_zero_expires_on_arrival() {
    let clock = MockClock::new();
    let removed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&removed);
    let cache = LocalCache::builder()
        .max_capacity(10)
        .expiry(|_: &u32, v: &u32| (*v == 0).then_some(Duration::ZERO))
        .eviction_listener(move |k: &u32, _: &u32, cause| seen.lock().unwrap().push((*k, cause)))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    cache.insert(1, 0);
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.len(), 0);
    assert_eq!(
        *removed.lock().unwrap(),
        [(1, RemovalCause::Replaced), (1, RemovalCause::Expired)]
    );
    // Without a cache-wide time-to-live, `None` never expires.
    cache.insert(2, 2);
    clock.advance(secs(1_000_000));
    assert_eq!(cache.get(&2), Some(2));
}

#[test]
fn an_expiry_sets_the_time_to_live_of_loaded_values() {
    let clock = MockClock::new();
    let (cache, calls) = with_expiry(&clock);
    let one = cache.get_or_load(1, || Ok::<_, std::io::Error>(1)).unwrap();
    let two = cache.get_or_load(2, || Ok::<_, std::io::Error>(2)).unwrap();
    assert_eq!((one, two), (1, 2));
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    clock.advance(secs(5));
    assert!(!cache.contains_key(&1), "the loaded odd value lived 5 s");
    assert!(cache.contains_key(&2));
    // A zero time-to-live: the caller gets the value, nothing is stored.
    let zero = cache.get_or_load(3, || Ok::<_, std::io::Error>(0)).unwrap();
    assert_eq!(zero, 0);
    assert!(!cache.contains_key(&3));
}

#[tokio::test]
async fn an_expiry_sets_the_time_to_live_of_values_loaded_async() {
    let clock = MockClock::new();
    let (cache, _) = with_expiry(&clock);
    let v = cache
        .get_or_load_async(1, || async { Ok::<_, std::io::Error>(7) })
        .await
        .unwrap();
    assert_eq!(v, 7);
    clock.advance(secs(4));
    assert_eq!(cache.get(&1), Some(7));
    clock.advance(secs(1));
    assert_eq!(cache.get(&1), None);
}

#[test]
fn an_expiry_and_a_time_to_idle_whichever_comes_first() {
    let clock = MockClock::new();
    let cache = LocalCache::builder()
        .max_capacity(10)
        .time_to_idle(secs(10))
        .expiry(|_: &u32, _: &u32| Some(secs(25)))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    cache.insert(2, 2);
    for _ in 0..2 {
        clock.advance(secs(9));
        assert_eq!(cache.get(&1), Some(1));
    }
    // 18 s: 2 idled out at 10 s; 1 was read at 9 and 18.
    assert_eq!(cache.get(&2), None);
    clock.advance(secs(7));
    // 25 s: the expiry's time-to-live, though read 7 s ago.
    assert_eq!(cache.get(&1), None);
}

#[test]
fn a_panicking_expiry_stores_nothing_and_leaves_the_cache_usable() {
    let cache = LocalCache::builder()
        .max_capacity(10)
        .expiry(|_: &u32, v: &u32| {
            assert_ne!(*v, 13, "unlucky");
            None
        })
        .build()
        .unwrap();
    let insert = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.insert(1, 13)));
    assert!(insert.is_err());
    assert_eq!(cache.get(&1), None);
    let load = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.get_or_load(2, || Ok::<_, std::io::Error>(13))
    }));
    assert!(load.is_err());
    assert_eq!(cache.get(&2), None);
    // The key is not wedged: the next load runs and stores.
    assert_eq!(
        cache.get_or_load(2, || Ok::<_, std::io::Error>(2)).unwrap(),
        2
    );
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.len(), 2);
}

/// A write marked an in-flight load of its key superseded before running
/// the expiry (and the weigher): when that panicked, nothing was written,
/// yet the load's value was not stored either.
#[test]
fn regression_a_write_whose_expiry_panics_does_not_supersede_a_load() {
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(10)
        .expiry(|_: &u32, v: &u32| {
            assert_ne!(*v, 13, "unlucky");
            None
        })
        .build()
        .unwrap();
    let (loader, release) = common::load_held_in_flight(&cache, 1, 7);
    let write = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.insert(1, 13)));
    assert!(write.is_err(), "the expiry panicked");
    release.send(()).unwrap();
    assert_eq!(loader.join().unwrap(), Ok(7));
    assert_eq!(cache.get(&1), Some(7), "the load was stored");
}

#[test]
fn regression_reads_alone_free_what_has_expired_in_every_shard() {
    // A cache that is only read (a warmed-up lookup table, say): a read
    // freed what was due in its own shard only, so with the reads on a
    // few keys the expired entries of the other shards were held, and
    // their values' memory with them, however many reads came (936 of the
    // 1,000 here after the 20,000 reads below). Only writes helped sweep
    // the other shards.
    type Read = fn(&LocalCache<u32, u32>) -> bool;
    let reads: [(&str, Read); 3] = [
        ("a hit", |c| c.get(&5_000).is_some()),
        ("a miss", |c| c.get(&6_000).is_none()),
        ("contains_key", |c| c.contains_key(&5_000)),
    ];
    for policy in [Policy::Adaptive, Policy::Lru, Policy::Fifo, Policy::Ttl] {
        for (what, read) in reads {
            let at = format!("{policy:?}, reads of {what}");
            let clock = MockClock::new();
            let expired = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&expired);
            let cache: LocalCache<u32, u32> = LocalCache::builder()
                .max_capacity(100_000)
                .shards(16)
                .policy(policy)
                .time_to_live(secs(10))
                .clock(clock.clone())
                .eviction_listener(move |_: &u32, _: &u32, cause| {
                    assert_eq!(cause, RemovalCause::Expired);
                    counted.fetch_add(1, Ordering::Relaxed);
                })
                .build()
                .unwrap();
            for k in 0..1_000 {
                cache.insert(k, k);
            }
            cache.insert_with_ttl(5_000, 5_000, Duration::MAX);
            clock.advance(secs(11));
            // About one read in 64 sweeps a shard picked at random: 20,000
            // reads leave a shard unswept with odds of about 1 in 10^8.
            for _ in 0..20_000 {
                assert!(read(&cache), "{at}");
            }
            assert_eq!(cache.weighted_size(), 1, "{at}: only the live key is left");
            assert_eq!(expired.load(Ordering::Relaxed), 1_000, "{at}");
            assert_eq!(cache.stats().evictions.expired, 1_000, "{at}");
        }
    }
}

#[test]
fn regression_reads_of_two_caches_in_turn_free_what_has_expired_in_both() {
    // Each thread helped sweep on every 64th read it made, of any cache:
    // a thread that read two caches in turn (two lookups per request, say)
    // made all its 64th reads on the same one, and the other was never
    // helped (951 of its 1,000 expired entries held after 40,000 reads).
    let clock = MockClock::new();
    let caches: Vec<LocalCache<u32, u32>> = (0..2)
        .map(|_| {
            LocalCache::builder()
                .max_capacity(100_000)
                .shards(16)
                .time_to_live(secs(10))
                .clock(clock.clone())
                .build()
                .unwrap()
        })
        .collect();
    for cache in &caches {
        for k in 0..1_000 {
            cache.insert(k, k);
        }
        cache.insert_with_ttl(5_000, 5_000, Duration::MAX);
    }
    clock.advance(secs(11));
    for _ in 0..20_000 {
        for cache in &caches {
            assert_eq!(cache.get(&5_000), Some(5_000));
        }
    }
    for (i, cache) in caches.iter().enumerate() {
        assert_eq!(
            cache.weighted_size(),
            1,
            "cache {i}: only the live key is left"
        );
    }
}

/// A clock set to a number of seconds from a fixed instant, which a test
/// may set back: the misbehaving clock the `Clock` docs forbid but a user
/// may still plug in.
#[derive(Debug, Clone)]
struct SetClock {
    base: std::time::Instant,
    secs: Arc<std::sync::atomic::AtomicU64>,
}

impl SetClock {
    fn at(secs: u64) -> Self {
        Self {
            base: std::time::Instant::now(),
            secs: Arc::new(std::sync::atomic::AtomicU64::new(secs)),
        }
    }

    fn set(&self, secs: u64) {
        self.secs.store(secs, Ordering::SeqCst);
    }
}

impl torque_cache::Clock for SetClock {
    fn now(&self) -> std::time::Instant {
        self.base + secs(self.secs.load(Ordering::SeqCst))
    }
}

#[test]
fn regression_a_clock_stepping_back_before_the_cache_was_built_does_not_extend_lifetimes() {
    // Built at 1,000 s by a clock that then steps back to 900. The cache
    // counted time from the instant it was built and read every earlier
    // instant as that one, so an entry written at 900 was taken as
    // written at 1,000: with a 5 s time-to-live `get` returned it until
    // 1,005, 105 s after it was written, by the clock that wrote it (the
    // `Clock` docs promise a write sets its times from the instant it
    // reads, as after a step back that stays after the build).
    type Write = fn(&LocalCache<u32, u32>);
    let writes: [(&str, Write, Option<Duration>, Option<Duration>); 3] = [
        (
            "insert_with_ttl",
            |c| c.insert_with_ttl(1, 1, secs(5)),
            None,
            None,
        ),
        ("time_to_live", |c| c.insert(1, 1), Some(secs(5)), None),
        ("time_to_idle", |c| c.insert(1, 1), None, Some(secs(5))),
    ];
    for policy in [Policy::Adaptive, Policy::Lru, Policy::Ttl] {
        for (what, write, ttl, tti) in writes {
            let at = format!("{policy:?}, {what}");
            let clock = SetClock::at(1_000);
            let mut builder = LocalCache::builder()
                .max_capacity(10)
                .policy(policy)
                .clock(clock.clone());
            if let Some(ttl) = ttl {
                builder = builder.time_to_live(ttl);
            }
            if let Some(tti) = tti {
                builder = builder.time_to_idle(tti);
            }
            let cache: LocalCache<u32, u32> = builder.build().unwrap();
            clock.set(900);
            write(&cache);
            clock.set(904);
            assert!(cache.contains_key(&1), "{at}: alive 4 s after the write");
            clock.set(906);
            assert_eq!(cache.get(&1), None, "{at}: expired 6 s after the write");
            assert!(!cache.contains_key(&1), "{at}");
            assert_eq!(cache.len(), 0, "{at}");
            assert_eq!(cache.stats().evictions.expired, 1, "{at}");
        }
    }
}
