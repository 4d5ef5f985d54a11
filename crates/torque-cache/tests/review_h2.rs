//! An adversarial review's regression tests (h2).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use torque_cache::{Clock, LocalCache, MockClock};

mod common;
use common::load_held_in_flight;

/// A mock clock that panics while armed.
#[derive(Debug, Clone)]
struct ArmedClock {
    inner: MockClock,
    armed: Arc<AtomicBool>,
}

impl Clock for ArmedClock {
    fn now(&self) -> Instant {
        assert!(!self.armed.load(Ordering::SeqCst), "the clock failed");
        self.inner.now()
    }
}

#[test]
fn regression_a_removal_whose_clock_panics_does_not_supersede_a_load() {
    // `remove`, `invalidate_all` and `retain` supersede the loads in
    // flight before they change the cache, then read the clock. A clock
    // that panics there ended the call before it changed anything, yet
    // the load was superseded all the same: its value was not stored, and
    // it had left the in-flight map, so a caller arriving meanwhile ran a
    // second loader for the key while the first still ran. (An `insert`
    // whose `Expiry` panics supersedes nothing: its user code runs first.)
    type Removal = fn(&LocalCache<u32, u32>);
    let removals: [(&str, Removal); 3] = [
        ("remove", |c| {
            c.remove(&1);
        }),
        ("invalidate_all", LocalCache::invalidate_all),
        ("retain", |c| c.retain(|_, _| false)),
    ];
    for (what, removal) in removals {
        let armed = Arc::new(AtomicBool::new(false));
        let cache: LocalCache<u32, u32> = LocalCache::builder()
            .max_capacity(10)
            .time_to_live(Duration::from_secs(60))
            .clock(ArmedClock {
                inner: MockClock::new(),
                armed: Arc::clone(&armed),
            })
            .build()
            .unwrap();
        let (loader, release) = load_held_in_flight(&cache, 1, 7);
        armed.store(true, Ordering::SeqCst);
        let removed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| removal(&cache)));
        armed.store(false, Ordering::SeqCst);
        assert!(removed.is_err(), "{what}: the clock panicked");
        // A caller arriving now waits for the load in flight (or, once it
        // is stored, reads its value): its own loader must not run.
        let waiter = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.get_or_load(1, || Ok::<_, ()>(99)))
        };
        release.send(()).unwrap();
        assert_eq!(loader.join().unwrap(), Ok(7), "{what}");
        assert_eq!(
            waiter.join().unwrap(),
            Ok(7),
            "{what}: a second loader ran for the key"
        );
        assert_eq!(cache.get(&1), Some(7), "{what}: the load was stored");
        assert_eq!(cache.stats().loads, 1, "{what}");
    }
}

#[test]
fn regression_a_remove_frees_what_has_expired_in_its_shard() {
    // docs/cache.md (Expiry): "every read or write of a shard frees what
    // is due in it". `remove` write-locks its key's shard but freed only
    // that key: the shard's other expired entries (and their values'
    // memory) stayed, counted in `weighted_size`, until some other call
    // swept it. A workload of removals (a session store whose sessions
    // are mostly ended explicitly) held them for as long as nothing else
    // wrote to that shard.
    use std::sync::Mutex;
    use torque_cache::RemovalCause;
    let clock = MockClock::new();
    let log: Arc<Mutex<Vec<(u32, RemovalCause)>>> = Arc::default();
    let sink = Arc::clone(&log);
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(10)
        .shards(1)
        .clock(clock.clone())
        .eviction_listener(move |k: &u32, _: &u32, cause| sink.lock().unwrap().push((*k, cause)))
        .build()
        .unwrap();
    cache.insert_with_ttl(1, 1, Duration::from_secs(1));
    cache.insert_with_ttl(2, 2, Duration::from_secs(3_600));
    cache.insert_with_ttl(3, 3, Duration::from_secs(3_600));
    clock.advance(Duration::from_secs(2));
    assert_eq!(cache.remove(&2), Some(2));
    assert_eq!(
        *log.lock().unwrap(),
        [(1, RemovalCause::Expired), (2, RemovalCause::Removed)]
    );
    assert_eq!(cache.weighted_size(), 1, "only key 3 is left");
    // An expired key removed: freed by the sweep, told once, as expired.
    cache.insert_with_ttl(4, 4, Duration::from_secs(1));
    clock.advance(Duration::from_secs(2));
    assert_eq!(cache.remove(&4), None);
    assert_eq!(log.lock().unwrap()[2..], [(4, RemovalCause::Expired)]);
    let stats = cache.stats();
    assert_eq!((stats.evictions.expired, stats.evictions.removed), (2, 1));
    assert_eq!(stats.inserts, cache.len() as u64 + stats.evictions.total());
}
