//! User code that uses the cache from inside a cache operation: a value's
//! or key's `Drop`, and a `Clock`. The cache's locks (parking_lot) are not
//! reentrant, so any of these running under a shard's lock or the in-flight
//! map's lock deadlocks its own thread. Each operation runs on a thread of
//! its own under a liveness bound that only fires on failure.

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use torque_cache::{Clock, LocalCache, MockClock};

mod common;
use common::bounded;

/// The key that drops write to and read from.
const SCRATCH: u32 = u32::MAX;

/// Where a probe finds its cache, and how many armed probes were dropped.
#[derive(Debug)]
struct Home<C> {
    cache: OnceLock<C>,
    drops: AtomicUsize,
}

impl<C> Home<C> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            cache: OnceLock::new(),
            drops: AtomicUsize::new(0),
        })
    }

    fn drops(&self) -> usize {
        self.drops.load(Ordering::SeqCst)
    }
}

type ValueCache = LocalCache<u32, Value>;

/// A value whose `Drop`, when armed, reads and writes the cache it was
/// stored in (through [`SCRATCH`], which holds only unarmed values). Clones
/// stay armed: a loaded value is stored as a clone.
#[derive(Debug, Clone)]
struct Value(Option<Arc<Home<ValueCache>>>);

impl Value {
    fn armed(home: &Arc<Home<ValueCache>>) -> Self {
        Self(Some(Arc::clone(home)))
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        if let Some(home) = self.0.take() {
            let cache = home.cache.get().expect("cache set");
            let _ = cache.get(&SCRATCH);
            cache.insert(SCRATCH, Value(None));
            home.drops.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// One shard, so that the scratch key shares the shard of every other key.
fn value_cache(
    capacity: u64,
    setup: impl FnOnce(
        torque_cache::LocalCacheBuilder<u32, Value>,
    ) -> torque_cache::LocalCacheBuilder<u32, Value>,
) -> (ValueCache, Arc<Home<ValueCache>>) {
    let cache = setup(LocalCache::builder().max_capacity(capacity).shards(1))
        .build()
        .expect("valid config");
    let home = Home::new();
    home.cache.set(cache.clone()).expect("set once");
    (cache, home)
}

#[test]
fn regression_a_value_dropped_by_a_replacing_insert_may_use_the_cache() {
    let (cache, home) = value_cache(100, |b| b);
    cache.insert(1, Value::armed(&home));
    let c = cache;
    let h = Arc::clone(&home);
    bounded("a replacing insert", move || c.insert(1, Value::armed(&h)));
    assert_eq!(home.drops(), 1, "the replaced value was dropped");
}

#[test]
fn with_a_listener_a_value_is_dropped_after_the_listener_saw_it() {
    // The listener sees the value alive, then it is dropped, both with no
    // lock held (this passed before the fix too: with a listener the
    // departed entries were already kept until after the unlock).
    let seen_alive = Arc::new(AtomicUsize::new(0));
    let home_slot: Arc<OnceLock<Arc<Home<ValueCache>>>> = Arc::default();
    let (cache, home) = {
        let seen_alive = Arc::clone(&seen_alive);
        let home_slot = Arc::clone(&home_slot);
        value_cache(100, move |b| {
            b.eviction_listener(move |_, v: &Value, _| {
                // The scratch key's unarmed values leave too.
                let home = home_slot.get().expect("home set");
                if v.0.is_some() && home.drops() == 0 {
                    seen_alive.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
    };
    home_slot.set(Arc::clone(&home)).expect("set once");
    cache.insert(1, Value::armed(&home));
    let c = cache.clone();
    let h = Arc::clone(&home);
    bounded("a replacing insert with a listener", move || {
        c.insert(1, Value::armed(&h));
    });
    assert_eq!(seen_alive.load(Ordering::SeqCst), 1);
    assert_eq!(home.drops(), 1);
    bounded("invalidate_all with a listener", move || {
        cache.invalidate_all()
    });
    assert_eq!(home.drops(), 2);
}

#[test]
fn regression_a_value_evicted_for_capacity_may_use_the_cache() {
    let (cache, home) = value_cache(2, |b| b);
    let c = cache.clone();
    let h = Arc::clone(&home);
    bounded("an evicting insert", move || {
        for k in 0..4 {
            c.insert(k, Value::armed(&h));
        }
    });
    assert!(home.drops() >= 2, "{} evictions dropped", home.drops());
    let c = cache;
    bounded("invalidate_all", move || c.invalidate_all());
    assert_eq!(home.drops(), 4, "every armed value was dropped once");
}

#[test]
fn regression_a_value_removed_by_remove_may_use_the_cache() {
    let (cache, home) = value_cache(100, |b| b);
    cache.insert(1, Value::armed(&home));
    let c = cache;
    bounded("remove", move || drop(c.remove(&1)));
    assert_eq!(home.drops(), 1);
}

#[test]
fn regression_values_removed_by_invalidate_all_may_use_the_cache() {
    let (cache, home) = value_cache(100, |b| b);
    for k in 0..3 {
        cache.insert(k, Value::armed(&home));
    }
    let c = cache;
    bounded("invalidate_all", move || c.invalidate_all());
    assert_eq!(home.drops(), 3);
}

#[test]
fn regression_values_removed_by_retain_may_use_the_cache() {
    let (cache, home) = value_cache(100, |b| b);
    for k in 0..4 {
        cache.insert(k, Value::armed(&home));
    }
    let c = cache.clone();
    bounded("retain", move || c.retain(|k, _| k % 2 == 0));
    assert_eq!(home.drops(), 2);
    assert!(cache.contains_key(&0) && !cache.contains_key(&1));
}

#[test]
fn regression_expired_values_may_use_the_cache() {
    let clock = MockClock::new();
    let ttl = Duration::from_secs(10);
    let (cache, home) = value_cache(100, |b| b.time_to_live(ttl).clock(clock.clone()));
    let past_ttl = Duration::from_secs(11);
    let c = cache;
    let h = Arc::clone(&home);
    bounded("expiry", move || {
        // Freed by a read of the expired key.
        c.insert(1, Value::armed(&h));
        clock.advance(past_ttl);
        assert!(c.get(&1).is_none());
        assert_eq!(h.drops(), 1);
        // Freed by a write of another key, which sweeps what is due.
        c.insert(2, Value::armed(&h));
        clock.advance(past_ttl);
        c.insert(3, Value(None));
        assert_eq!(h.drops(), 2);
        // Freed by run_pending_tasks.
        c.insert(4, Value::armed(&h));
        clock.advance(past_ttl);
        c.run_pending_tasks();
        assert_eq!(h.drops(), 3);
        // Expired on arrival: never stored.
        c.insert_with_ttl(5, Value::armed(&h), Duration::ZERO);
        assert_eq!(h.drops(), 4);
    });
}

#[test]
fn regression_a_finishing_load_may_evict_values_that_use_the_cache() {
    // The loaded value's write evicts an older one.
    let (cache, home) = value_cache(1, |b| b);
    cache.insert(2, Value::armed(&home));
    let c = cache.clone();
    let h = Arc::clone(&home);
    bounded("a load that evicts", move || {
        let v = c.get_or_load(1, || Ok::<_, ()>(Value::armed(&h)));
        assert!(v.is_ok());
    });
    assert!(home.drops() >= 1, "the evicted value was dropped");
    // Drops write the scratch key, which may leave for capacity too.
    assert!(cache.stats().evictions.capacity >= 1);
}

#[test]
fn regression_a_finishing_load_may_refuse_a_value_that_uses_the_cache() {
    // A capacity of 0 stores nothing: the loaded value's stored copy
    // leaves as soon as it is written.
    let (cache, home) = value_cache(0, |b| b);
    let c = cache.clone();
    let h = Arc::clone(&home);
    bounded("a load whose value is refused", move || {
        let v = c.get_or_load(1, || Ok::<_, ()>(Value::armed(&h)));
        assert!(v.is_ok());
    });
    assert!(home.drops() >= 1, "the refused copy was dropped");
    // Drops write the scratch key, which may leave for capacity too.
    assert!(cache.stats().evictions.capacity >= 1);
}

#[test]
fn regression_a_superseded_load_may_drop_values_that_use_the_cache() {
    // The loader writes its own key: the load is superseded and its value
    // is returned but not stored.
    let (cache, home) = value_cache(100, |b| b);
    let c = cache.clone();
    let h = Arc::clone(&home);
    bounded("a superseded load", move || {
        let v = c.get_or_load(1, || {
            c.insert(1, Value(None));
            Ok::<_, ()>(Value::armed(&h))
        });
        assert!(v.is_ok());
    });
    assert!(home.drops() >= 1);
    assert!(
        cache.get(&1).is_some_and(|v| v.0.is_none()),
        "the write won"
    );
}

type KeyCache = LocalCache<Key, u32>;

/// A key whose `Drop`, when armed, writes the cache (an unarmed scratch
/// key). Clones stay armed; equality and hash look at the number only.
#[derive(Debug, Clone)]
struct Key(u32, Option<Arc<Home<KeyCache>>>);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        if let Some(home) = self.1.take() {
            let cache = home.cache.get().expect("cache set");
            let _ = cache.get(&Key(SCRATCH, None));
            cache.insert(Key(SCRATCH, None), 0);
            home.drops.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn key_cache() -> (KeyCache, Arc<Home<KeyCache>>) {
    let cache = LocalCache::builder()
        .max_capacity(100)
        .shards(1)
        .build()
        .expect("valid config");
    let home = Home::new();
    home.cache.set(cache.clone()).expect("set once");
    (cache, home)
}

#[test]
fn regression_a_key_dropped_by_a_replacing_insert_may_use_the_cache() {
    // The entry keeps its first key; the replacing write's own key leaves.
    let (cache, home) = key_cache();
    cache.insert(Key(1, Some(Arc::clone(&home))), 1);
    let c = cache;
    let h = Arc::clone(&home);
    bounded("a replacing insert", move || {
        c.insert(Key(1, Some(h)), 2);
    });
    assert_eq!(home.drops(), 1);
}

#[test]
fn regression_a_key_dropped_by_a_finishing_load_may_use_the_cache() {
    // The in-flight map's copy of the key leaves the map as the load ends;
    // dropped under the map's lock, its write (which supersedes in-flight
    // loads under that lock) waited for the lock its own thread held.
    let (cache, home) = key_cache();
    let c = cache.clone();
    let h = Arc::clone(&home);
    bounded("a finishing load", move || {
        assert_eq!(c.get_or_load(Key(1, Some(h)), || Ok::<_, ()>(7)), Ok(7));
    });
    assert!(home.drops() >= 1);
    assert_eq!(cache.get(&Key(1, None)), Some(7));
}

thread_local! {
    /// Set while a [`ReadingClock`] reads the cache on this thread, so that
    /// the cache's own clock reads during that read do not recurse.
    static READING: Cell<bool> = const { Cell::new(false) };
}

/// A clock that looks something up in the cache it serves, read-through
/// (the loader fails, so it is looked up, and loaded, every time).
#[derive(Debug)]
struct ReadingClock {
    time: MockClock,
    cache: Arc<OnceLock<LocalCache<u32, u32>>>,
}

impl Clock for ReadingClock {
    fn now(&self) -> Instant {
        if let Some(cache) = self.cache.get()
            && !READING.get()
        {
            READING.set(true);
            let _ = cache.get_or_load(SCRATCH, || Err::<u32, _>(()));
            READING.set(false);
        }
        self.time.now()
    }
}

#[test]
fn regression_a_clock_that_reads_the_cache_does_not_deadlock_a_load() {
    // A load read the clock under the in-flight map's lock: to re-check the
    // cache before leading a load, and to time its write.
    let slot: Arc<OnceLock<LocalCache<u32, u32>>> = Arc::default();
    let cache = LocalCache::builder()
        .max_capacity(100)
        .time_to_live(Duration::from_secs(60))
        .clock(ReadingClock {
            time: MockClock::new(),
            cache: Arc::clone(&slot),
        })
        .build()
        .expect("valid config");
    slot.set(cache.clone()).expect("set once");
    let c = cache.clone();
    let v = bounded("a load with a clock that reads the cache", move || {
        c.get_or_load(1, || Ok::<_, ()>(1))
    });
    assert_eq!(v, Ok(1));
    assert_eq!(cache.get(&1), Some(1));
}

#[test]
fn an_expiry_that_uses_the_cache_deadlocks_neither_a_write_nor_a_load() {
    // The expiry runs with no lock held, as the weigher does: here it
    // reads and writes the cache it decides for.
    let slot: Arc<OnceLock<LocalCache<u32, u32>>> = Arc::default();
    let home = Arc::clone(&slot);
    let cache = LocalCache::builder()
        .max_capacity(100)
        .expiry(move |k: &u32, _: &u32| {
            if let Some(cache) = home.get()
                && *k != SCRATCH
            {
                let seen = cache.get(&SCRATCH).unwrap_or(0);
                cache.insert(SCRATCH, seen + 1);
            }
            Some(Duration::from_secs(60))
        })
        .build()
        .expect("valid config");
    slot.set(cache.clone()).expect("set once");
    let c = cache.clone();
    let v = bounded(
        "a write and a load whose expiry uses the cache",
        move || {
            c.insert(1, 1);
            c.get_or_load(2, || Ok::<_, ()>(2))
        },
    );
    assert_eq!(v, Ok(2));
    assert_eq!(
        cache.get(&SCRATCH),
        Some(2),
        "the expiry ran once per write"
    );
}
