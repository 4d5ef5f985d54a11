//! Seventh review: user code that panics (a key's `Eq`, the eviction
//! listener), alone or with user code that uses the cache. Each test is
//! named for the defect it pins.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use torque_cache::LocalCache;

mod common;
use common::bounded;

/// A key whose hashes all collide (so a write of one compares it with the
/// others under the shard's lock) and whose `Eq` panics once when armed.
#[derive(Debug, Clone)]
struct Bomb(u32, Arc<AtomicBool>);

impl PartialEq for Bomb {
    fn eq(&self, other: &Self) -> bool {
        assert!(!self.1.swap(false, Ordering::SeqCst), "key eq bug");
        self.0 == other.0
    }
}

impl Eq for Bomb {}

impl std::hash::Hash for Bomb {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

type BombCache = LocalCache<Bomb, Value>;

/// Where a value finds its cache, and how many armed values were dropped.
#[derive(Debug, Default)]
struct Home {
    cache: OnceLock<BombCache>,
    drops: AtomicUsize,
}

/// A value whose `Drop`, when armed, reads and writes the cache it was
/// written to (which the docs allow: "`Drop` of keys and values ... run
/// with no cache lock held and may use the cache", entries "refused on
/// arrival" included). Clones stay armed.
#[derive(Debug, Clone)]
struct Value(u32, Option<Arc<Home>>);

impl Drop for Value {
    fn drop(&mut self) {
        if let Some(home) = self.1.take() {
            let cache = home.cache.get().expect("cache set");
            let unarmed = Arc::new(AtomicBool::new(false));
            let _ = cache.get(&Bomb(u32::MAX, Arc::clone(&unarmed)));
            cache.insert(Bomb(u32::MAX, unarmed), Value(0, None));
            home.drops.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A one-shard cache of capacity 10 weighted by the values' numbers, with
/// key 1 in it, and the switch of the keys' `Eq` bomb.
fn bomb_cache() -> (BombCache, Arc<Home>, Arc<AtomicBool>) {
    let cache: BombCache = LocalCache::builder()
        .max_capacity(10)
        .shards(1)
        .weigher(|_: &Bomb, v: &Value| v.0)
        .build()
        .expect("valid config");
    let home = Arc::new(Home::default());
    home.cache.set(cache.clone()).expect("set once");
    let bomb = Arc::new(AtomicBool::new(false));
    cache.insert(Bomb(1, Arc::clone(&bomb)), Value(1, None));
    (cache, home, bomb)
}

/// Runs `write` (which arms the keys' `Eq` bomb and writes) under the
/// liveness bound, then checks that the panic reached the caller, that the
/// `drops` armed values were dropped, and that the cache is still usable.
fn assert_panics_and_drops_after_unlocking(
    what: &'static str,
    drops: usize,
    write: impl FnOnce(&BombCache, &Arc<Home>, &Arc<AtomicBool>) + Send + 'static,
) {
    let (cache, home, bomb) = bomb_cache();
    let (c, h, b) = (cache.clone(), Arc::clone(&home), Arc::clone(&bomb));
    let caught = bounded(what, move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write(&c, &h, &b);
        }))
        .map_err(|panic| panic.downcast_ref::<&str>().copied())
    });
    assert_eq!(caught.err(), Some(Some("key eq bug")), "{what}");
    assert_eq!(home.drops.load(Ordering::SeqCst), drops, "{what}");
    assert_eq!(cache.get(&Bomb(1, bomb)).map(|v| v.0), Some(1), "{what}");
}

#[test]
fn regression_an_insert_whose_key_eq_panics_drops_its_value_after_unlocking() {
    // The write looks its key up under the shard's lock (the key's `Eq`,
    // user code that may panic, the caller catching it). The key and value
    // it was to store were dropped right there, while the unwinding write
    // still held the lock: a value whose `Drop` uses the cache (allowed, as
    // for every value that leaves or is refused) deadlocked its thread.
    assert_panics_and_drops_after_unlocking("an insert", 1, |cache, home, bomb| {
        bomb.store(true, Ordering::SeqCst);
        cache.insert(Bomb(2, Arc::clone(bomb)), Value(2, Some(Arc::clone(home))));
    });
}

#[test]
fn regression_a_refused_insert_whose_key_eq_panics_drops_its_value_after_unlocking() {
    // Heavier than the whole capacity: refused on arrival, after a look-up
    // of the key under the lock for an older value to remove.
    assert_panics_and_drops_after_unlocking("a refused insert", 1, |cache, home, bomb| {
        bomb.store(true, Ordering::SeqCst);
        cache.insert(Bomb(2, Arc::clone(bomb)), Value(11, Some(Arc::clone(home))));
    });
}

#[test]
fn regression_a_load_whose_key_eq_panics_as_it_stores_drops_its_value_after_unlocking() {
    // A finishing load stores its value under the in-flight map's lock and
    // the shard's; the stored copy was dropped under both. Three armed
    // values in all: the loaded one, the copy to store and the waiters'.
    assert_panics_and_drops_after_unlocking("a load's write", 3, |cache, home, bomb| {
        let (home, bomb) = (Arc::clone(home), Arc::clone(bomb));
        let _ = cache.get_or_load(Bomb(2, Arc::clone(&bomb)), move || {
            // Armed once the load's look-ups have missed: the write's own
            // look-up panics.
            bomb.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Value(2, Some(home)))
        });
    });
}

type Heard = Arc<std::sync::Mutex<Vec<(u32, torque_cache::RemovalCause)>>>;

/// A listener that records what it hears and panics on the first
/// departure it hears of (a bug of its own, such as an `unwrap` on a
/// channel closed at shutdown).
fn failing_listener(
    heard: &Heard,
) -> impl Fn(&u32, &u32, torque_cache::RemovalCause) + Send + Sync + 'static {
    let heard = Arc::clone(heard);
    move |k, _, cause| {
        let mut heard = heard.lock().unwrap();
        heard.push((*k, cause));
        let first = heard.len() == 1;
        drop(heard);
        assert!(!first, "listener bug");
    }
}

#[test]
fn regression_a_panicking_listener_does_not_keep_the_other_departures_of_a_write_untold() {
    // One write that evicts several entries tells the listener of each in
    // turn, after the lock is released. When the listener panicked on one,
    // the departures after it were dropped untold ("called once for every
    // entry that leaves the cache"), though `stats()` counted them: a
    // listener that frees a resource per entry leaked theirs.
    let heard = Heard::default();
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(3)
        .shards(1)
        .policy(torque_cache::Policy::Fifo)
        .weigher(|_: &u32, v: &u32| *v)
        .eviction_listener(failing_listener(&heard))
        .build()
        .expect("valid config");
    for k in 1..=3 {
        cache.insert(k, 1);
    }
    // Weighs the whole capacity: the three others leave, oldest first.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.insert(4, 3)));
    assert!(caught.is_err(), "the listener's panic reaches the writer");
    let cap = torque_cache::RemovalCause::Capacity;
    assert_eq!(*heard.lock().unwrap(), vec![(1, cap), (2, cap), (3, cap)]);
    assert_eq!(cache.stats().evictions.capacity, 3);
    assert_eq!(cache.get(&4), Some(3));
}

#[test]
fn regression_a_panicking_listener_does_not_stop_invalidate_all_half_way() {
    // `invalidate_all` clears the shards one at a time and tells the
    // listener after each. A listener that panicked on one entry left every
    // later shard uncleared (and the rest of that shard's entries untold):
    // the cache kept serving values the caller had invalidated.
    let heard = Heard::default();
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(1_000)
        .shards(8)
        .eviction_listener(failing_listener(&heard))
        .build()
        .expect("valid config");
    for k in 0..200 {
        cache.insert(k, k);
    }
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.invalidate_all()));
    assert!(caught.is_err(), "the listener's panic reaches the caller");
    assert_eq!(cache.len(), 0, "entries survived invalidate_all");
    assert_eq!(cache.weighted_size(), 0);
    let mut keys: Vec<u32> = heard.lock().unwrap().iter().map(|&(k, _)| k).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        (0..200).collect::<Vec<_>>(),
        "each departure told once"
    );
    assert_eq!(cache.stats().evictions.removed, 200);
}

#[test]
fn regression_a_listener_panicking_on_an_expired_entry_still_hears_of_the_cleared_ones() {
    // `invalidate_all` first frees a shard's expired entries, then clears
    // the rest; the listener hears of the two lots in turn. Told in one
    // go, a panic on an expired entry dropped the cleared ones untold.
    let heard = Heard::default();
    let clock = torque_cache::MockClock::new();
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(100)
        .shards(1)
        .clock(clock.clone())
        .eviction_listener(failing_listener(&heard))
        .build()
        .expect("valid config");
    cache.insert_with_ttl(0, 0, Duration::from_secs(1));
    for k in 1..10 {
        cache.insert(k, k);
    }
    clock.advance(Duration::from_secs(2));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.invalidate_all()));
    assert!(caught.is_err(), "the listener's panic reaches the caller");
    let heard = heard.lock().unwrap().clone();
    assert_eq!(
        heard.first(),
        Some(&(0, torque_cache::RemovalCause::Expired)),
        "the expired entry is told first, and the listener panics on it"
    );
    let mut keys: Vec<u32> = heard.iter().map(|&(k, _)| k).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        (0..10).collect::<Vec<_>>(),
        "each departure told once"
    );
}
