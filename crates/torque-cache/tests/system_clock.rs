//! Expiry by the real clock, which a cache with the default clock reads
//! through the CPU's time-stamp counter (see `SystemClock`): an entry lives
//! for its time-to-live by `Instant`, no shorter, and then goes.

use std::time::{Duration, Instant};

use torque_cache::{LocalCache, SystemClock};

/// How far the counter may stray from `Instant` (see `SystemClock`: it is
/// re-anchored to `Instant` every millisecond, and a scale 0.2 % off
/// drifts 2 µs in between).
const SLACK: Duration = Duration::from_micros(50);

/// Inserts an entry with `ttl` and waits for it to go: it must not go
/// before `ttl` has passed by `Instant` (measured from before the insert
/// to after the read that missed, so the bracket only widens), give or take
/// [`SLACK`], and must go within a bound far above it (a counter scaled
/// wrong by 100x fails it).
fn expires_after(cache: &LocalCache<u64, u64>, ttl: Duration) {
    let long_lived = 2;
    cache.insert_with_ttl(long_lived, 2, Duration::from_secs(3600));
    let before = Instant::now();
    cache.insert_with_ttl(1, 1, ttl);
    loop {
        let read = cache.get(&1);
        let elapsed = before.elapsed();
        if read.is_none() {
            assert!(
                elapsed + SLACK >= ttl,
                "gone after {elapsed:?}, ttl {ttl:?}"
            );
            break;
        }
        assert!(
            elapsed < ttl * 100,
            "still there after {elapsed:?}, ttl {ttl:?}"
        );
        std::hint::spin_loop();
    }
    assert_eq!(cache.get(&long_lived), Some(2));
}

#[test]
fn the_default_clock_expires_an_entry_after_its_time_to_live() {
    let cache = LocalCache::builder().max_capacity(10).build().unwrap();
    expires_after(&cache, Duration::from_millis(20));
}

#[test]
fn an_explicit_system_clock_expires_an_entry_after_its_time_to_live() {
    let cache = LocalCache::builder()
        .max_capacity(10)
        .clock(SystemClock)
        .build()
        .unwrap();
    expires_after(&cache, Duration::from_millis(20));
}

#[test]
fn a_cache_wide_time_to_live_by_the_default_clock() {
    let ttl = Duration::from_millis(20);
    let cache = LocalCache::builder()
        .max_capacity(10)
        .time_to_live(ttl)
        .build()
        .unwrap();
    let before = Instant::now();
    cache.insert(1u64, 1u64);
    while cache.get(&1).is_some() {
        assert!(before.elapsed() < ttl * 100, "still there");
        std::hint::spin_loop();
    }
    assert!(
        before.elapsed() + SLACK >= ttl,
        "gone after {:?}",
        before.elapsed()
    );
}
