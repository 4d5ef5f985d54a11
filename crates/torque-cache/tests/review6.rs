//! Sixth review: races and interleavings of loads with writes, removals,
//! invalidations and each other. Regression tests, each named for the bug.

use std::sync::Arc;
use std::time::Duration;

use torque_cache::LocalCache;

/// Runs `f` on a thread of its own and fails if it does not finish within
/// 10 s (a hang is a failure, not a stuck test run).
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = done_tx.send(outcome);
    });
    match done.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("hung: did not finish within 10 s"),
    }
}

/// Two blocking loads on two threads, each loader loading the other's key:
/// key 1's loader waits for the load of key 2, whose loader waits for the
/// load of key 1. On one thread this cycle panics; on two it waited
/// forever, holding both threads and every later caller of either key. Now
/// one of the inner calls panics (its load is abandoned, the other
/// finishes), both calls return, and both keys load afterwards.
#[test]
fn regression_blocking_loads_on_two_threads_waiting_for_each_others_keys_do_not_hang() {
    for round in 0..20 {
        let cache: LocalCache<u64, u64> = LocalCache::new(100);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let c = cache.clone();
        let outcomes = bounded(move || {
            let threads: Vec<_> = [(1u64, 2u64), (2, 1)]
                .into_iter()
                .map(|(mine, other)| {
                    let (cache, barrier) = (c.clone(), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            cache.get_or_load(mine, || {
                                // Both loads are running before either
                                // waits for the other.
                                barrier.wait();
                                cache
                                    .get_or_load(other, || Ok::<_, ()>(other * 10))
                                    .map(|v| v + mine)
                                    .map_err(|_| ())
                            })
                        }))
                        .is_ok()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<bool>>()
        });
        assert!(
            outcomes.iter().any(|ok| *ok),
            "round {round}: at least one load finishes: {outcomes:?}"
        );
        // Nothing is left wedged: both keys load (or are cached).
        let c = cache.clone();
        let after = bounded(move || {
            (
                c.get_or_load(1, || Ok::<_, ()>(10)).is_ok(),
                c.get_or_load(2, || Ok::<_, ()>(20)).is_ok(),
            )
        });
        assert_eq!(after, (true, true), "round {round}");
    }
}
