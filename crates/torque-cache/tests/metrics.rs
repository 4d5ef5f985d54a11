//! The `metrics` feature: the same events as `stats()`, through the facade.
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use torque_cache::LocalCache;

/// Counts every counter increment by name and labels.
#[derive(Default)]
struct Counting {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

struct Cell(Arc<AtomicU64>);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl Counting {
    fn get(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut name = key.name().to_string();
        for label in key.labels() {
            name.push_str(&format!("{{{}={}}}", label.key(), label.value()));
        }
        let cell = Arc::clone(self.counters.lock().unwrap().entry(name).or_default());
        Counter::from_arc(Arc::new(Cell(cell)))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn facade_sees_what_stats_sees() {
    let recorder = Counting::default();
    metrics::with_local_recorder(&recorder, || {
        let cache: LocalCache<u32, u32> = LocalCache::builder()
            .max_capacity(2)
            .shards(1)
            .build()
            .unwrap();
        cache.insert(1, 1);
        cache.insert(2, 2);
        cache.insert(3, 3); // evicts one
        cache.insert(3, 4); // replaces
        cache.get(&3);
        cache.get(&99);
        cache.remove(&3);
        let _ = cache.get_or_load(7, || Ok::<_, ()>(7));
        let _ = cache.get_or_load(8, || Err::<u32, _>(()));
        cache.insert(9, 9);
        cache.invalidate_all(); // `Removed`, counted from what was cleared
        // A loader that panics: a failure (the guard records it).
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.get_or_load(10, || -> Result<u32, ()> { panic!("loader bug") })
        }));
        assert!(panicked.is_err());

        let s = cache.stats();
        assert_eq!(recorder.get("torque_cache_hits_total"), s.hits);
        assert_eq!(recorder.get("torque_cache_misses_total"), s.misses);
        assert_eq!(recorder.get("torque_cache_inserts_total"), s.inserts);
        assert_eq!(
            recorder.get("torque_cache_evictions_total{cause=capacity}"),
            s.evictions.capacity
        );
        assert_eq!(
            recorder.get("torque_cache_evictions_total{cause=replaced}"),
            s.evictions.replaced
        );
        assert_eq!(
            recorder.get("torque_cache_evictions_total{cause=removed}"),
            s.evictions.removed
        );
        assert_eq!(recorder.get("torque_cache_loads_total"), s.loads);
        assert_eq!(
            recorder.get("torque_cache_load_failures_total"),
            s.load_failures
        );
        assert_eq!((s.hits, s.loads, s.load_failures), (1, 1, 2));
        assert!(s.evictions.capacity >= 1);
    });
}

/// A recorder that reads the cache whenever a counter is registered (as a
/// recorder that caches its own lookups in a `LocalCache` would).
struct ReadsTheCache {
    cache: std::sync::OnceLock<LocalCache<u32, u32>>,
}

impl Recorder for ReadsTheCache {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        if let Some(cache) = self.cache.get() {
            let _ = cache.contains_key(&1);
        }
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn regression_the_recorder_is_not_called_under_a_shard_lock() {
    // Removals were recorded while the shard was write-locked: a recorder
    // that uses the cache deadlocked (parking_lot's lock is not
    // reentrant), and every recorder lengthened the critical section.
    without_deadlock("the cache", || {
        let recorder = ReadsTheCache {
            cache: std::sync::OnceLock::new(),
        };
        metrics::with_local_recorder(&recorder, || {
            let cache = recorder.cache.get_or_init(|| {
                LocalCache::builder()
                    .max_capacity(1)
                    .shards(1)
                    .build()
                    .unwrap()
            });
            cache.insert(1, 1);
            cache.insert(1, 2); // replaced
            cache.insert(2, 2); // evicts one for capacity
            cache.remove(&2);
            cache.insert(3, 3);
            cache.invalidate_all();
        });
    });
}

/// Runs `f` on a thread of its own and waits for it at most 30 s, so that
/// a deadlock fails the test instead of hanging it.
fn without_deadlock(what: &str, f: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        done.send(()).unwrap();
    });
    match finished.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} deadlocked inside its metrics recorder")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{what} panicked (its message is above)")
        }
    }
}

#[test]
fn regression_invalidate_all_records_the_cleared_entries_when_the_listener_panics() {
    // `invalidate_all` recorded what it cleared only after telling the
    // listener of what had expired: a listener that panicked there left
    // every cleared entry of the shard counted by `stats()` as removed
    // but never recorded.
    let recorder = Counting::default();
    metrics::with_local_recorder(&recorder, || {
        let clock = torque_cache::MockClock::new();
        let cache: LocalCache<u32, u32> = LocalCache::builder()
            .max_capacity(10)
            .shards(1)
            .clock(clock.clone())
            .eviction_listener(|_: &u32, _: &u32, cause| {
                assert_ne!(cause, torque_cache::RemovalCause::Expired, "listener fails");
            })
            .build()
            .unwrap();
        cache.insert_with_ttl(1, 1, std::time::Duration::from_secs(5));
        cache.insert(2, 2);
        cache.insert(3, 3);
        clock.advance(std::time::Duration::from_secs(6));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.invalidate_all();
        }));
        assert!(outcome.is_err(), "the listener panicked");
        let s = cache.stats();
        assert_eq!(s.evictions.removed, 2, "2 and 3 were cleared");
        assert_eq!(
            recorder.get("torque_cache_evictions_total{cause=expired}"),
            s.evictions.expired
        );
        assert_eq!(
            recorder.get("torque_cache_evictions_total{cause=removed}"),
            s.evictions.removed
        );
    });
}

/// A recorder that, the first time an insert is recorded, removes a key
/// of the cache (as a recorder that keeps its own bookkeeping in a cache
/// might).
struct WritesTheCache {
    cache: std::sync::OnceLock<LocalCache<u32, u32>>,
    armed: std::sync::atomic::AtomicBool,
}

impl Recorder for WritesTheCache {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        if key.name() == "torque_cache_inserts_total"
            && self.armed.swap(false, Ordering::SeqCst)
            && let Some(cache) = self.cache.get()
        {
            cache.remove(&100);
        }
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn regression_a_load_records_its_insert_outside_the_in_flight_map_lock() {
    // A finishing load recorded its insert while it held the in-flight
    // map's lock: a recorder that wrote to the cache (a write takes that
    // lock while a load is in flight; parking_lot's lock is not
    // reentrant) deadlocked.
    without_deadlock("the load", || {
        let recorder = WritesTheCache {
            cache: std::sync::OnceLock::new(),
            armed: std::sync::atomic::AtomicBool::new(false),
        };
        metrics::with_local_recorder(&recorder, || {
            let cache = recorder
                .cache
                .get_or_init(|| LocalCache::builder().max_capacity(10).build().unwrap());
            cache.insert(100, 100);
            recorder.armed.store(true, Ordering::SeqCst);
            assert_eq!(cache.get_or_load(1, || Ok::<_, ()>(1)), Ok(1));
            assert!(!recorder.armed.load(Ordering::SeqCst), "the recorder ran");
            assert!(!cache.contains_key(&100), "its write took effect");
        });
    });
}
