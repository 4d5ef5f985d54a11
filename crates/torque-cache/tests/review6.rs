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

/// Blocking loads on two (or three) threads, each loader loading the next
/// thread's key: key 1's loader waits for the load of key 2, whose loader
/// waits for the load of key 1. On one thread this cycle panics; on two it
/// waited forever, holding every thread of the cycle and every later caller
/// of its keys. Now one of the inner calls panics (its load is abandoned,
/// the others finish), every call returns, and every key loads afterwards.
#[test]
fn regression_blocking_loads_on_two_threads_waiting_for_each_others_keys_do_not_hang() {
    for threads in [2u64, 3] {
        for round in 0..20 {
            let cache: LocalCache<u64, u64> = LocalCache::new(100);
            let barrier = Arc::new(std::sync::Barrier::new(threads as usize));
            let c = cache.clone();
            let outcomes = bounded(move || {
                let handles: Vec<_> = (1..=threads)
                    .map(|mine| {
                        let other = mine % threads + 1;
                        let (cache, barrier) = (c.clone(), Arc::clone(&barrier));
                        std::thread::spawn(move || {
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                cache.get_or_load(mine, || {
                                    // Every load is running before any
                                    // waits for the next.
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
                handles
                    .into_iter()
                    .map(|t| t.join().unwrap())
                    .collect::<Vec<bool>>()
            });
            assert!(
                outcomes.iter().any(|ok| *ok),
                "{threads} threads, round {round}: a load finishes: {outcomes:?}"
            );
            // Nothing is left wedged: every key loads (or is cached).
            let c = cache.clone();
            let after = bounded(move || {
                (1..=threads).all(|k| c.get_or_load(k, || Ok::<_, ()>(k * 10)).is_ok())
            });
            assert!(after, "{threads} threads, round {round}");
        }
    }
}
