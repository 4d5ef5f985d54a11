//! Reads, writes, removal, capacity and the listener of `LocalCache`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use torque_cache::{BuildError, LocalCache, Policy, RemovalCause};

mod common;
use common::POLICIES;

type Log = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

fn logged(policy: Policy, capacity: u64, shards: usize) -> (LocalCache<u32, u32>, Log) {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache = LocalCache::builder()
        .max_capacity(capacity)
        .policy(policy)
        .shards(shards)
        .eviction_listener(move |k: &u32, v: &u32, cause| {
            sink.lock().unwrap().push((*k, *v, cause))
        })
        .build()
        .unwrap();
    (cache, log)
}

#[test]
fn insert_get_remove_contains() {
    for policy in POLICIES {
        let (cache, log) = logged(policy, 100, 4);
        assert_eq!(cache.get(&1), None);
        cache.insert(1, 10);
        cache.insert(2, 20);
        assert_eq!(cache.get(&1), Some(10));
        assert!(cache.contains_key(&2));
        assert!(!cache.contains_key(&3));
        cache.insert(1, 11);
        assert_eq!(cache.get(&1), Some(11));
        assert_eq!(cache.remove(&2), Some(20));
        assert_eq!(cache.remove(&2), None);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.weighted_size(), 1);
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                (1, 10, RemovalCause::Replaced),
                (2, 20, RemovalCause::Removed)
            ],
            "{policy:?}"
        );
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.inserts), (2, 1, 3), "{policy:?}");
        assert_eq!((s.evictions.replaced, s.evictions.removed), (1, 1));
    }
}

#[test]
fn capacity_holds_for_the_whole_cache_and_every_eviction_is_reported() {
    for policy in POLICIES {
        let (cache, log) = logged(policy, 100, 16);
        for k in 0..1000 {
            cache.insert(k, k);
            assert!(cache.weighted_size() <= 100, "{policy:?}");
        }
        assert_eq!(cache.len(), 100, "{policy:?}");
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 900, "{policy:?}");
        assert!(log.iter().all(|e| e.2 == RemovalCause::Capacity));
        assert_eq!(cache.stats().evictions.capacity, 900);
    }
}

#[test]
fn no_shard_evicts_while_the_cache_has_room() {
    // quick_cache #55: with per-shard capacity, a skewed key set evicts long
    // before the cache is full. Here 16 shards share one bound.
    for policy in POLICIES {
        let (cache, log) = logged(policy, 64, 16);
        for k in 0..64 {
            cache.insert(k, k);
        }
        assert!(log.lock().unwrap().is_empty(), "{policy:?}");
        assert_eq!(cache.len(), 64);
        for k in 0..64 {
            assert_eq!(cache.get(&k), Some(k), "{policy:?}");
        }
    }
}

#[test]
fn single_shard_lru_evicts_least_recently_used() {
    let (cache, log) = logged(Policy::Lru, 3, 1);
    for k in 0..3 {
        cache.insert(k, k);
    }
    cache.get(&0);
    cache.insert(3, 3);
    assert_eq!(log.lock().unwrap()[0], (1, 1, RemovalCause::Capacity));
}

#[test]
fn invalidate_all_and_retain_report_removed() {
    let (cache, log) = logged(Policy::Adaptive, 100, 4);
    for k in 0..10 {
        cache.insert(k, k);
    }
    cache.retain(|k, _| k % 2 == 0);
    assert_eq!(cache.len(), 5);
    assert!((0..10).all(|k| cache.contains_key(&k) == (k % 2 == 0)));
    cache.invalidate_all();
    assert!(cache.is_empty());
    assert_eq!(cache.weighted_size(), 0);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 10);
    assert!(log.iter().all(|e| e.2 == RemovalCause::Removed));
    // Usable after clearing.
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
}

#[test]
fn weigher_bounds_total_weight() {
    let cache: LocalCache<u32, Vec<u8>> = LocalCache::builder()
        .max_capacity(100)
        .weigher(|_, v: &Vec<u8>| v.len() as u32)
        .build()
        .unwrap();
    for k in 0..50 {
        cache.insert(k, vec![0; 10]);
        assert!(cache.weighted_size() <= 100);
    }
    assert_eq!(cache.weighted_size(), 100);
    assert_eq!(cache.len(), 10);
}

#[test]
fn borrowed_lookups_work() {
    let cache: LocalCache<String, u32> = LocalCache::new(10);
    cache.insert("a".to_string(), 1);
    assert_eq!(cache.get("a"), Some(1));
    assert!(cache.contains_key("a"));
    assert_eq!(cache.remove("a"), Some(1));
}

#[test]
fn dos_resistant_hasher_can_be_chosen() {
    let cache: LocalCache<u32, u32, std::hash::RandomState> = LocalCache::builder()
        .max_capacity(10)
        .hasher(std::hash::RandomState::new())
        .build()
        .unwrap();
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
}

#[test]
fn build_errors_say_what_to_change() {
    let err = LocalCache::<u32, u32>::builder().build().unwrap_err();
    assert_eq!(err, BuildError::MissingCapacity);
    assert!(err.to_string().contains("max_capacity"));
    let err = LocalCache::<u32, u32>::builder()
        .max_capacity(1)
        .shards(3)
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::InvalidShards { shards: 3 });
    assert!(err.to_string().contains("power of two"));
}

#[test]
fn clones_share_the_cache() {
    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    let other = cache.clone();
    other.insert(1, 2);
    assert_eq!(cache.get(&1), Some(2));
}

#[test]
fn config_struct_sets_the_plain_settings() {
    let config = torque_cache::LocalCacheConfig {
        max_capacity: 3,
        policy: Policy::Fifo,
        shards: Some(1),
        ..Default::default()
    };
    let cache: LocalCache<u32, u32> = LocalCache::builder().config(&config).build().unwrap();
    assert_eq!((cache.max_capacity(), cache.policy()), (3, Policy::Fifo));
    for k in 0..4 {
        cache.insert(k, k);
    }
    assert!(!cache.contains_key(&0), "fifo evicted the oldest");
    let bad = torque_cache::LocalCacheConfig {
        shards: Some(6),
        ..Default::default()
    };
    assert_eq!(
        LocalCache::<u32, u32>::builder()
            .config(&bad)
            .build()
            .unwrap_err(),
        BuildError::InvalidShards { shards: 6 }
    );
}

#[test]
fn regression_a_panicking_retain_predicate_leaves_weight_and_listener_exact() {
    // A panic in the predicate (caught by the caller, e.g. a tokio task)
    // used to skip the global weight update and the listener for the
    // entries already removed: weighted_size stayed too high for good (the
    // cache then evicts early) and those departures were never reported.
    let (cache, log) = logged(Policy::Lru, 100, 1);
    for k in 0..10 {
        cache.insert(k, k);
    }
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut calls = 0;
        cache.retain(|_, _| {
            calls += 1;
            assert!(calls < 5, "predicate bug");
            false
        });
    }));
    assert!(caught.is_err());
    assert_eq!(cache.len(), 6);
    assert_eq!(cache.weighted_size(), 6, "global weight drifted");
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 4, "removals not reported: {log:?}");
    assert!(log.iter().all(|e| e.2 == RemovalCause::Removed));
    assert_eq!(cache.stats().evictions.removed, 4);
}

/// A value whose `Clone` panics while its shared switch is on.
#[derive(Debug)]
struct CloneBomb(u32, Arc<std::sync::atomic::AtomicBool>);

impl Clone for CloneBomb {
    fn clone(&self) -> Self {
        assert!(
            !self.1.load(std::sync::atomic::Ordering::SeqCst),
            "value clone bug"
        );
        Self(self.0, Arc::clone(&self.1))
    }
}

#[test]
fn regression_a_value_clone_panicking_on_a_read_that_frees_expired_entries_leaves_weight_and_listener_exact()
 {
    // A read that finds something due frees it under the shard's lock and
    // then clones the value it returns: a panic in that clone (caught by
    // the caller) skipped the global weight update and the listener for
    // what it had freed, so weighted_size stayed too high for good.
    for policy in POLICIES {
        let log: Arc<Mutex<Vec<(u32, RemovalCause)>>> = Arc::default();
        let sink = Arc::clone(&log);
        let clock = torque_cache::MockClock::new();
        let cache: LocalCache<u32, CloneBomb> = LocalCache::builder()
            .max_capacity(100)
            .policy(policy)
            .shards(1)
            .clock(clock.clone())
            .eviction_listener(move |k: &u32, _: &CloneBomb, cause| {
                sink.lock().unwrap().push((*k, cause))
            })
            .build()
            .unwrap();
        let bomb = Arc::new(std::sync::atomic::AtomicBool::new(false));
        cache.insert_with_ttl(1, CloneBomb(1, Arc::clone(&bomb)), Duration::from_secs(5));
        cache.insert(2, CloneBomb(2, Arc::clone(&bomb)));
        clock.advance(Duration::from_secs(6));
        bomb.store(true, std::sync::atomic::Ordering::SeqCst);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.get(&2)));
        bomb.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(caught.is_err(), "{policy:?}");
        assert_eq!(
            cache.weighted_size(),
            1,
            "{policy:?}: global weight drifted"
        );
        assert_eq!(
            *log.lock().unwrap(),
            vec![(1, RemovalCause::Expired)],
            "{policy:?}: the expired entry's departure was not reported"
        );
        assert_eq!(cache.stats().evictions.expired, 1, "{policy:?}");
        assert_eq!(cache.get(&2).map(|v| v.0), Some(2), "{policy:?}");
    }
}

/// A key whose `Eq` panics while its shared switch is on; hashed by number.
#[derive(Debug, Clone)]
struct EqBomb(u32, Arc<std::sync::atomic::AtomicBool>);

impl PartialEq for EqBomb {
    fn eq(&self, other: &Self) -> bool {
        assert!(
            !self.1.load(std::sync::atomic::Ordering::SeqCst),
            "key eq bug"
        );
        self.0 == other.0
    }
}

impl Eq for EqBomb {}

impl std::hash::Hash for EqBomb {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

#[test]
fn regression_a_key_eq_panicking_on_a_write_that_frees_expired_entries_leaves_weight_exact() {
    // A write first frees what is due in its shard, then looks its key up
    // (the key's `Eq`, user code): a panic there (caught by the caller)
    // skipped the global weight update for what the sweep had freed.
    for policy in POLICIES {
        let clock = torque_cache::MockClock::new();
        let cache: LocalCache<EqBomb, u32> = LocalCache::builder()
            .max_capacity(100)
            .policy(policy)
            .shards(1)
            .clock(clock.clone())
            .build()
            .unwrap();
        let bomb = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let key = |k| EqBomb(k, Arc::clone(&bomb));
        cache.insert_with_ttl(key(1), 1, Duration::from_secs(5));
        cache.insert(key(2), 2);
        clock.advance(Duration::from_secs(6));
        bomb.store(true, std::sync::atomic::Ordering::SeqCst);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.insert(key(2), 20);
        }));
        bomb.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(caught.is_err(), "{policy:?}");
        assert_eq!(
            cache.weighted_size(),
            1,
            "{policy:?}: global weight drifted"
        );
        assert_eq!(cache.stats().evictions.expired, 1, "{policy:?}");
        assert_eq!(cache.len(), 1, "{policy:?}");
    }
}

#[test]
fn regression_a_key_eq_panicking_on_a_write_that_frees_expired_entries_reports_them() {
    // The write's sweep frees the expired entry under the shard's lock, for
    // the listener once the lock is released; a panic in the key's `Eq`
    // after it (caught by the caller) dropped what the sweep had freed
    // untold, though the listener is "called once for every entry that
    // leaves the cache" and a read in the same spot tells it.
    for policy in POLICIES {
        let log: Arc<Mutex<Vec<(u32, RemovalCause)>>> = Arc::default();
        let sink = Arc::clone(&log);
        let clock = torque_cache::MockClock::new();
        let cache: LocalCache<EqBomb, u32> = LocalCache::builder()
            .max_capacity(100)
            .policy(policy)
            .shards(1)
            .clock(clock.clone())
            .eviction_listener(move |k: &EqBomb, _: &u32, cause| {
                sink.lock().unwrap().push((k.0, cause))
            })
            .build()
            .unwrap();
        let bomb = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let key = |k| EqBomb(k, Arc::clone(&bomb));
        cache.insert_with_ttl(key(1), 1, Duration::from_secs(5));
        cache.insert(key(2), 2);
        clock.advance(Duration::from_secs(6));
        bomb.store(true, std::sync::atomic::Ordering::SeqCst);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.insert(key(2), 20);
        }));
        bomb.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(caught.is_err(), "{policy:?}");
        assert_eq!(
            *log.lock().unwrap(),
            vec![(1, RemovalCause::Expired)],
            "{policy:?}: the expired entry's departure was not reported"
        );
        assert_eq!(cache.get(&key(2)), Some(2), "{policy:?}");
    }
}

/// A key whose hashes all collide (so a write of one compares it with the
/// others) and whose `Eq` panics once when armed.
#[derive(Clone)]
struct CollidingBomb(u32, Arc<std::sync::atomic::AtomicBool>);

impl PartialEq for CollidingBomb {
    fn eq(&self, other: &Self) -> bool {
        assert!(
            !self.1.swap(false, std::sync::atomic::Ordering::SeqCst),
            "key eq bug"
        );
        self.0 == other.0
    }
}

impl Eq for CollidingBomb {}

impl std::hash::Hash for CollidingBomb {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

#[test]
fn regression_a_key_eq_panicking_on_a_loads_write_that_frees_expired_entries_reports_them() {
    // a171f02 made `insert` tell the listener what its sweep freed when the
    // key's `Eq` panics after it; a load's write (`get_or_load` storing the
    // loaded value) runs the same sweep and lookup, and dropped what the
    // sweep had freed untold.
    for policy in POLICIES {
        let log: Arc<Mutex<Vec<(u32, RemovalCause)>>> = Arc::default();
        let sink = Arc::clone(&log);
        let clock = torque_cache::MockClock::new();
        let cache: LocalCache<CollidingBomb, u32> = LocalCache::builder()
            .max_capacity(100)
            .policy(policy)
            .shards(1)
            .clock(clock.clone())
            .eviction_listener(move |k: &CollidingBomb, _: &u32, cause| {
                sink.lock().unwrap().push((k.0, cause))
            })
            .build()
            .unwrap();
        let bomb = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let key = |k| CollidingBomb(k, Arc::clone(&bomb));
        cache.insert_with_ttl(key(1), 1, Duration::from_secs(5));
        cache.insert(key(2), 2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.get_or_load(key(3), || {
                // Once the look-up has missed (a read that finds an entry
                // expired frees and reports it itself): the entry expires,
                // and the write's own look-up, after its sweep, panics.
                clock.advance(Duration::from_secs(6));
                bomb.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, std::io::Error>(3)
            })
        }));
        let panic = caught.expect_err("the panic must reach the caller");
        assert_eq!(
            panic.downcast_ref::<&str>().copied(),
            Some("key eq bug"),
            "{policy:?}"
        );
        assert!(
            !bomb.load(std::sync::atomic::Ordering::SeqCst),
            "{policy:?}"
        );
        assert_eq!(
            *log.lock().unwrap(),
            vec![(1, RemovalCause::Expired)],
            "{policy:?}: the expired entry's departure was not reported"
        );
        assert_eq!(cache.len(), 1, "{policy:?}");
        assert_eq!(cache.weighted_size(), 1, "{policy:?}");
        // The load was abandoned, not left in flight: the key loads again.
        assert_eq!(
            cache
                .get_or_load(key(3), || Ok::<_, std::io::Error>(30))
                .unwrap(),
            30,
            "{policy:?}"
        );
    }
}
