//! `LocalCache::sweep_every`: an idle cache frees what has expired.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use torque_cache::{LocalCache, MockClock, RemovalCause};

mod common;
use common::eventually;

#[test]
fn an_idle_cache_with_a_sweeper_frees_what_has_expired() {
    let clock = MockClock::new();
    // Counted, not asserted, in the listener: a panic on the sweeper
    // thread would be caught there and show up here only as a timeout.
    let expired = Arc::new(AtomicUsize::new(0));
    let other = Arc::new(AtomicUsize::new(0));
    let (heard, wrong) = (Arc::clone(&expired), Arc::clone(&other));
    let cache: LocalCache<u32, Vec<u8>> = LocalCache::builder()
        .max_capacity(1_000)
        .time_to_live(Duration::from_secs(10))
        .clock(clock.clone())
        .eviction_listener(move |_, _, cause| {
            let n = if cause == RemovalCause::Expired {
                &heard
            } else {
                &wrong
            };
            n.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    for k in 0..100 {
        cache.insert(k, vec![0; 1024]);
    }
    cache.sweep_every(Duration::from_millis(1)).unwrap();
    clock.advance(Duration::from_secs(11));
    // No read or write from here on: only the sweeper can free them.
    eventually("the sweeper freed the 100 expired entries", || {
        expired.load(Ordering::SeqCst) + other.load(Ordering::SeqCst) >= 100
    });
    assert_eq!(other.load(Ordering::SeqCst), 0, "removals not for expiry");
    assert_eq!(expired.load(Ordering::SeqCst), 100);
    assert_eq!(cache.stats().evictions.expired, 100);
    assert_eq!(cache.weighted_size(), 0);
}

#[test]
fn a_sweeper_keeps_sweeping_after_a_listener_panics() {
    let clock = MockClock::new();
    let heard = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&heard);
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(100)
        .time_to_live(Duration::from_secs(10))
        .clock(clock.clone())
        .eviction_listener(move |k, _, _| {
            count.fetch_add(1, Ordering::SeqCst);
            assert_ne!(
                *k, 0,
                "the listener panics on key 0 (expected in this test)"
            );
        })
        .build()
        .unwrap();
    cache.insert(0, 0);
    cache.sweep_every(Duration::from_millis(1)).unwrap();
    clock.advance(Duration::from_secs(11));
    eventually("the first sweep told the listener of key 0", || {
        heard.load(Ordering::SeqCst) >= 1
    });
    // Inserted after the panic, with the time-to-live from now.
    cache.insert(1, 1);
    clock.advance(Duration::from_secs(11));
    eventually("a later sweep freed key 1", || {
        heard.load(Ordering::SeqCst) >= 2
    });
}

#[test]
fn a_zero_interval_or_a_second_sweeper_is_an_error() {
    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    let zero = cache.sweep_every(Duration::ZERO).unwrap_err();
    assert_eq!(zero.kind(), ErrorKind::InvalidInput);
    cache.sweep_every(Duration::from_secs(60)).unwrap();
    // Through another handle to the same cache, too.
    let other = cache.clone();
    let twice = other.sweep_every(Duration::from_secs(1)).unwrap_err();
    assert_eq!(twice.kind(), ErrorKind::AlreadyExists);
    drop(cache);
}

#[test]
fn a_listener_on_the_sweeper_thread_may_use_the_cache() {
    // The sweeper tells the listener with no lock held, as every other
    // path does (docs/cache.md, "User code and locks").
    let clock = MockClock::new();
    let slot: Arc<std::sync::Mutex<Option<LocalCache<u32, u32>>>> = Arc::default();
    let from_listener = Arc::clone(&slot);
    let done = Arc::new(AtomicUsize::new(0));
    let heard = Arc::clone(&done);
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(100)
        .time_to_live(Duration::from_secs(10))
        .clock(clock.clone())
        .eviction_listener(move |k, v, cause| {
            let cache = from_listener.lock().unwrap().clone();
            if let (Some(cache), RemovalCause::Expired) = (cache, cause) {
                // Reads, loads and writes back under another key.
                assert_eq!(cache.get(k), None);
                let again = cache.get_or_load(*k + 100, || Ok::<_, ()>(*v));
                assert_eq!(again, Ok(*v));
                let sweeper = std::thread::current().name() == Some("torque-cache-sweep");
                heard.store(if sweeper { 1 } else { 2 }, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    *slot.lock().unwrap() = Some(cache.clone());
    cache.insert(1, 7);
    cache.sweep_every(Duration::from_millis(1)).unwrap();
    clock.advance(Duration::from_secs(11));
    // No read or write until the listener is done: only the sweeper frees.
    eventually("the listener reloaded key 1 as 101", || {
        done.load(Ordering::SeqCst) != 0
    });
    assert_eq!(done.load(Ordering::SeqCst), 1, "told on the sweeper thread");
    assert_eq!(cache.get(&101), Some(7));
    // Breaks the cycle through the listener, so that the cache is dropped.
    slot.lock().unwrap().take();
}

/// A clock that panics while `broken` is set (a user's clock with a bug),
/// counting the reads it panicked on.
#[derive(Debug, Clone)]
struct FlakyClock {
    inner: MockClock,
    broken: Arc<std::sync::atomic::AtomicBool>,
    panicked: Arc<AtomicUsize>,
}

impl torque_cache::Clock for FlakyClock {
    fn now(&self) -> Instant {
        if self.broken.load(Ordering::SeqCst) {
            self.panicked.fetch_add(1, Ordering::SeqCst);
            panic!("the clock is broken (expected in this test)");
        }
        self.inner.now()
    }
}

#[test]
fn a_sweeper_keeps_sweeping_after_its_clock_panics() {
    let mock = MockClock::new();
    let clock = FlakyClock {
        inner: mock.clone(),
        broken: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        panicked: Arc::new(AtomicUsize::new(0)),
    };
    let expired = Arc::new(AtomicUsize::new(0));
    let heard = Arc::clone(&expired);
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(100)
        .time_to_live(Duration::from_secs(10))
        .clock(clock.clone())
        .eviction_listener(move |_, _, _| {
            heard.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    cache.insert(1, 1);
    // Broken before the first tick: only the sweeper reads the clock now.
    clock.broken.store(true, Ordering::SeqCst);
    cache.sweep_every(Duration::from_millis(1)).unwrap();
    // A second panicking read means the first panic did not end the thread.
    eventually("the sweeper read the broken clock twice", || {
        clock.panicked.load(Ordering::SeqCst) >= 2
    });
    // Mended: the thread frees the expired entry.
    clock.broken.store(false, Ordering::SeqCst);
    mock.advance(Duration::from_secs(11));
    eventually("the sweeper freed the entry after the clock mended", || {
        expired.load(Ordering::SeqCst) == 1
    });
}
