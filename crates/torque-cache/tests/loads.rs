//! Stampede protection: concurrent misses of one key run one load; errors
//! are shared but not cached; cancelled or panicking callers never wedge the
//! others (moka #240).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;
use torque_cache::{LocalCache, MockClock, Policy};

const WAITERS: usize = 1000;

/// Yields until `n` reads have missed, i.e. until `n` callers have looked
/// the key up and joined (or started) the load. Bounded by a timeout so a
/// bug fails the test instead of hanging it.
async fn until_misses(cache: &LocalCache<u32, u64>, n: u64) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while cache.stats().misses < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("callers did not arrive");
}

/// Yields until a loader has recorded its caller in `leader`: the leader's
/// miss is counted before its loader first runs, so on a multi-thread
/// runtime `until_misses` can return in between. Bounded like it.
async fn until_led(leader: &AtomicUsize) -> usize {
    let led = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let i = leader.load(Ordering::SeqCst);
            if i != usize::MAX {
                return i;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("no loader ran");
    assert!(led < WAITERS);
    led
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_async_misses_load_once_even_with_cancelled_waiters() {
    let cache: LocalCache<u32, u64> = LocalCache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = Arc::new(AtomicUsize::new(usize::MAX));
    let gate = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for i in 0..WAITERS {
        let (cache, calls, leader, gate) =
            (cache.clone(), calls.clone(), leader.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load_async(7, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    leader.store(i, Ordering::SeqCst);
                    gate.notified().await;
                    Ok::<_, String>(42)
                })
                .await
        }));
    }
    until_misses(&cache, WAITERS as u64).await;
    // Cancel every tenth waiter (never the leader) while the load runs.
    let leader = until_led(&leader).await;
    let cancelled: Vec<usize> = (0..WAITERS)
        .filter(|i| i % 10 == 3 && *i != leader)
        .collect();
    for &i in &cancelled {
        tasks[i].abort();
    }
    gate.notify_one();
    let mut values = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(v) => {
                assert_eq!(v, Ok(42));
                values += 1;
            }
            Err(e) => assert!(e.is_cancelled() && cancelled.contains(&i)),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the loader ran once");
    assert!(values >= WAITERS - cancelled.len());
    assert_eq!(cache.get(&7), Some(42));
    let s = cache.stats();
    assert_eq!((s.loads, s.load_failures), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_hands_the_load_to_a_waiter() {
    let cache: LocalCache<u32, u64> = LocalCache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = Arc::new(AtomicUsize::new(usize::MAX));
    let never = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for i in 0..WAITERS {
        let (cache, calls, leader, never) =
            (cache.clone(), calls.clone(), leader.clone(), never.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load_async(7, || async move {
                    // The first loader hangs until cancelled; later ones
                    // answer at once.
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        leader.store(i, Ordering::SeqCst);
                        never.notified().await;
                    }
                    Ok::<_, String>(42)
                })
                .await
        }));
    }
    until_misses(&cache, WAITERS as u64).await;
    let leader = until_led(&leader).await;
    tasks[leader].abort();
    for (i, task) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(v)) => assert_eq!(v, Ok(42)),
            Ok(Err(e)) => assert!(e.is_cancelled() && i == leader),
            Err(_) => panic!("waiter {i} wedged after the leader was cancelled"),
        }
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one abandoned load, one real"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reach_every_waiter_and_are_not_cached() {
    let cache: LocalCache<u32, u64> = LocalCache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    // Opened once for every load: a caller whose miss was counted but that
    // joined only after the failed load had ended finds no cached value (an
    // error is not cached) and leads a load of its own, which must not wait
    // on a gate already used (with a one-shot `Notify` this test hung now
    // and then).
    let (open, gate) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, calls, mut gate) = (cache.clone(), calls.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load_async(1, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.wait_for(|&open| open).await.expect("test alive");
                    Err::<u64, _>("db down".to_string())
                })
                .await
        }));
    }
    until_misses(&cache, 100).await;
    open.send(true).expect("loaders alive");
    // Every caller gets the error; callers of one load share one error
    // value, so there are as many distinct values as loads (one, unless a
    // caller came late).
    let mut errors: Vec<Arc<String>> = Vec::new();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(*err, "db down");
        if !errors.iter().any(|e| Arc::ptr_eq(e, &err)) {
            errors.push(err);
        }
    }
    let loads = calls.load(Ordering::SeqCst);
    assert_eq!(errors.len(), loads, "one shared error per load");
    assert!(loads < 100, "concurrent callers shared a load");
    assert_eq!(cache.get(&1), None, "errors are not cached");
    let v = cache
        .get_or_load_async(1, || async { Ok::<_, String>(5) })
        .await;
    assert_eq!(v, Ok(5));
    let s = cache.stats();
    assert_eq!((s.loads, s.load_failures), (1, loads as u64));
}

#[test]
fn concurrent_blocking_misses_load_once() {
    const THREADS: usize = 8;
    let cache: LocalCache<u32, u64> = LocalCache::new(100);
    let calls = AtomicUsize::new(0);
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                start.wait();
                let v = cache.get_or_load(9, || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Hold the load open until every thread has missed.
                    while cache.stats().misses < THREADS as u64 {
                        std::thread::yield_now();
                    }
                    Ok::<_, ()>(99)
                });
                assert_eq!(v, Ok(99));
            });
        }
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn a_panicking_loader_does_not_wedge_waiters() {
    const THREADS: usize = 4;
    let cache: LocalCache<u32, u64> = LocalCache::new(100);
    let calls = AtomicUsize::new(0);
    let start = Barrier::new(THREADS);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    cache.get_or_load(3, || {
                        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            while cache.stats().misses < THREADS as u64 {
                                std::thread::yield_now();
                            }
                            panic!("loader bug");
                        }
                        Ok::<_, ()>(3)
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let panicked = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(panicked, 1);
    assert!(results.iter().flatten().all(|v| *v == Ok(3)));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn different_keys_load_independently() {
    let cache: LocalCache<u32, u64> = LocalCache::new(100);
    let v = cache.get_or_load(1, || {
        // A nested load of another key from inside a loader must not
        // deadlock.
        cache.get_or_load(2, || Ok::<_, ()>(2)).map(|two| two + 1)
    });
    assert_eq!(v.map_err(|_| ()), Ok(3));
    assert_eq!(cache.get(&2), Some(2));
}

/// Many rounds of concurrent async loads of a fresh key with random
/// cancellations (leaders included): every surviving caller gets the value,
/// nobody hangs, and exactly one load per key runs to completion.
async fn cancellation_rounds(rounds: u64, tasks_per_round: u64) {
    let cache: LocalCache<u32, u64> = LocalCache::new(100_000);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..rounds {
        let key = round as u32;
        let completed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..tasks_per_round {
            let (cache, completed) = (cache.clone(), Arc::clone(&completed));
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load_async(key, || async move {
                        for _ in 0..3 {
                            tokio::task::yield_now().await;
                        }
                        completed.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(u64::from(key) * 3)
                    })
                    .await
            }));
        }
        // Cancel a random third, at random moments.
        for task in &tasks {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                if x.is_multiple_of(2) {
                    tokio::task::yield_now().await;
                }
                task.abort();
            }
        }
        for task in tasks {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(v)) => assert_eq!(v, Ok(u64::from(key) * 3)),
                Ok(Err(e)) => assert!(e.is_cancelled()),
                Err(_) => panic!("round {round}: a caller hung"),
            }
        }
        let done = completed.load(Ordering::SeqCst);
        // Zero if every caller that could have led was cancelled first.
        assert!(done <= 1, "round {round}: {done} loads completed");
        if done == 1 {
            assert_eq!(cache.get(&key), Some(u64::from(key) * 3));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cancellations_never_wedge_or_double_load() {
    cancellation_rounds(50, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long stress run; CI runs it with --ignored stress_"]
async fn stress_random_cancellations() {
    cancellation_rounds(2_000, 200).await;
}

#[test]
fn regression_listener_may_load_the_key_whose_load_just_finished() {
    // The docs let the listener use the cache. The leader's insert told the
    // listener of departures (here its own value, refused by a capacity of
    // 0) before it left the in-flight map, so a listener that loads that
    // key waited on the leader's own load: on itself, for ever.
    use std::sync::OnceLock;
    let cell: Arc<OnceLock<LocalCache<u32, u64>>> = Arc::default();
    let for_listener = Arc::clone(&cell);
    let reloads = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reloads);
    let cache: LocalCache<u32, u64> = LocalCache::builder()
        .max_capacity(0)
        .eviction_listener(move |k: &u32, _: &u64, _| {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                let cache = for_listener.get().expect("set");
                assert_eq!(cache.get_or_load(*k, || Ok::<_, ()>(2)), Ok(2));
            }
        })
        .build()
        .unwrap();
    cell.set(cache.clone()).expect("once");
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let v = cache.get_or_load(1, || Ok::<_, ()>(1));
        done.send(v).expect("receiver alive");
    });
    let v = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("get_or_load hung: the listener waited on its own thread's load");
    assert_eq!(v, Ok(1));
    assert_eq!(reloads.load(Ordering::SeqCst), 2);
}

/// A reader thread whose load of key 1 reads the source (the old value:
/// one) and then waits, once it has started; it finishes when the
/// returned sender sends.
fn a_load_of_key_1_held_open(
    cache: &LocalCache<u32, u64>,
) -> (
    std::thread::JoinHandle<Result<u64, Arc<()>>>,
    std::sync::mpsc::Sender<()>,
) {
    let (started_tx, started) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            cache.get_or_load(1, || {
                started_tx.send(()).expect("test alive");
                go_rx.recv().expect("test alive");
                Ok::<_, ()>(1)
            })
        })
    };
    started.recv().expect("loader started");
    (reader, go)
}

/// Changes key 1 by `how`: "insert" (writes 2), "remove", "retain" (of
/// the other keys) or "invalidate_all".
fn invalidate_key_1(cache: &LocalCache<u32, u64>, how: &str) {
    match how {
        "insert" => cache.insert(1, 2),
        "remove" => {
            cache.remove(&1);
        }
        "retain" => cache.retain(|k, _| *k != 1),
        "invalidate_all" => cache.invalidate_all(),
        other => panic!("no invalidation named {other}"),
    }
}

#[test]
fn regression_a_write_during_a_load_is_not_overwritten_by_the_loaded_value() {
    // Write-through: a writer updates the source, then the cache, while a
    // reader's load (begun before the update) is still running. The load
    // finished last and stored its older value over the newer one, which
    // then stayed until evicted or expired. Likewise a remove or
    // invalidate_all issued during a load was undone by it, and so was a
    // retain that would have dropped the key.
    for invalidation in ["insert", "remove", "invalidate_all", "retain"] {
        let cache: LocalCache<u32, u64> = LocalCache::new(100);
        let (reader, go) = a_load_of_key_1_held_open(&cache);
        invalidate_key_1(&cache, invalidation);
        go.send(()).expect("loader waiting");
        // The reader itself may see the value it loaded.
        assert_eq!(reader.join().expect("no panic"), Ok(1));
        let expected = (invalidation == "insert").then_some(2);
        assert_eq!(
            cache.get(&1),
            expected,
            "after {invalidation} during the load"
        );
    }
}

#[test]
fn regression_a_call_after_an_invalidation_does_not_wait_for_the_load_it_superseded() {
    // The writer updates the source, then removes the key (or invalidates
    // every key, or retains others), while a reader's load begun before the
    // update still runs; then it loads the key itself. Its call found the
    // superseded load still in the in-flight map and waited for it, and so
    // got the value read before its own update, from a call made after its
    // `remove` returned. Now it loads afresh; the first load's callers
    // still get the first load's value.
    for invalidation in ["remove", "invalidate_all", "retain"] {
        let cache: LocalCache<u32, u64> = LocalCache::new(100);
        let (reader, go) = a_load_of_key_1_held_open(&cache);
        invalidate_key_1(&cache, invalidation);
        let (late_tx, late) = std::sync::mpsc::channel();
        let writer = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                cache.get_or_load(1, || {
                    late_tx.send(()).expect("test alive");
                    Ok::<_, ()>(2)
                })
            })
        };
        let loaded = late.recv_timeout(Duration::from_secs(10));
        go.send(()).expect("loader waiting");
        assert!(
            loaded.is_ok(),
            "after {invalidation}: the later call waited for the superseded load"
        );
        assert_eq!(writer.join().expect("no panic"), Ok(2), "{invalidation}");
        assert_eq!(reader.join().expect("no panic"), Ok(1), "{invalidation}");
        assert_eq!(cache.get(&1), Some(2), "after {invalidation}");
    }
}

#[test]
fn a_loader_that_loads_its_own_key_panics_instead_of_waiting_forever() {
    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    let (done_tx, done) = std::sync::mpsc::channel();
    {
        let cache = cache.clone();
        std::thread::spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                cache.get_or_load(1, || {
                    // Re-entrant: this thread already leads the load of 1.
                    cache.get_or_load(1, || Ok::<_, ()>(2)).map_err(|_| ())
                })
            }));
            done_tx.send(outcome.is_err()).expect("test alive");
        });
    }
    // A liveness check: the old behaviour never returns at all.
    let panicked = done
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the re-entrant load returned instead of waiting for itself");
    assert!(panicked, "the inner call panics with a clear message");
    // The abandoned load wedges nobody: the key loads normally afterwards.
    assert_eq!(cache.get_or_load(1, || Ok::<_, ()>(3)), Ok(3));
}

#[test]
fn a_weigher_that_writes_to_the_cache_does_not_deadlock_a_load() {
    // A plain insert runs the weigher outside every lock, so a weigher may
    // use the cache; a loaded value's weigher ran under the in-flight map's
    // lock, and a write from it (which supersedes in-flight loads under
    // that lock) waited for the lock its own thread held, forever.
    let slot: Arc<std::sync::OnceLock<LocalCache<u32, u32>>> = Arc::default();
    let cache = {
        let slot = Arc::clone(&slot);
        LocalCache::<u32, u32>::builder()
            .max_capacity(100)
            .weigher(move |k: &u32, _: &u32| {
                if *k == 1
                    && let Some(cache) = slot.get()
                {
                    cache.insert(2, 2);
                }
                1
            })
            .build()
            .expect("valid config")
    };
    slot.set(cache.clone()).expect("set once");
    cache.insert(1, 0);
    cache.remove(&1);
    let (done_tx, done) = std::sync::mpsc::channel();
    {
        let cache = cache.clone();
        std::thread::spawn(move || {
            done_tx
                .send(cache.get_or_load(1, || Ok::<_, ()>(1)))
                .expect("test alive");
        });
    }
    // A liveness bound: the deadlocked load never returns.
    let loaded = done
        .recv_timeout(Duration::from_secs(10))
        .expect("the load deadlocked on the weigher's write");
    assert_eq!(loaded, Ok(1));
    assert_eq!(cache.get(&2), Some(2));
}

/// Runs `f` on its own thread and returns whether it panicked, or fails the
/// test if it neither panics nor returns within 10 s (it waits for itself).
fn panics_instead_of_hanging(f: impl FnOnce() + Send + 'static) -> bool {
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        done_tx.send(outcome.is_err()).expect("test alive");
    });
    done.recv_timeout(Duration::from_secs(10))
        .expect("the re-entrant load returned instead of waiting for itself")
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn an_async_loader_awaiting_its_own_key_panics_instead_of_waiting_forever() {
    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    let inner = cache.clone();
    let panicked = panics_instead_of_hanging(move || {
        current_thread_runtime().block_on(async {
            let _ = inner
                .get_or_load_async(1, || async {
                    inner
                        .get_or_load_async(1, || async { Ok::<_, ()>(2) })
                        .await
                        .map_err(|_| ())
                })
                .await;
        });
    });
    assert!(panicked, "the inner call panics with a clear message");
    // The abandoned load wedges nobody.
    let v =
        current_thread_runtime().block_on(cache.get_or_load_async(1, || async { Ok::<_, ()>(3) }));
    assert_eq!(v, Ok(3));
}

#[test]
fn a_load_cycle_through_another_key_panics_instead_of_waiting_forever() {
    // 1's loader loads 2, whose loader awaits 1: each waits for the other.
    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    let inner = cache.clone();
    let panicked = panics_instead_of_hanging(move || {
        current_thread_runtime().block_on(async {
            let _ = inner
                .get_or_load_async(1, || async {
                    inner
                        .get_or_load_async(2, || async {
                            inner
                                .get_or_load_async(1, || async { Ok::<_, ()>(9) })
                                .await
                                .map_err(|_| ())
                        })
                        .await
                        .map_err(|_| ())
                })
                .await;
        });
    });
    assert!(panicked);
    assert_eq!(cache.get_or_load(1, || Ok::<_, ()>(3)), Ok(3));
    assert_eq!(cache.get_or_load(2, || Ok::<_, ()>(4)), Ok(4));
}

#[test]
fn an_async_loader_calling_the_blocking_load_of_its_own_key_panics() {
    let inner: LocalCache<u32, u32> = LocalCache::new(10);

    let panicked = panics_instead_of_hanging(move || {
        current_thread_runtime().block_on(async {
            let _ = inner
                .get_or_load_async(1, || async {
                    inner.get_or_load(1, || Ok::<_, ()>(2)).map_err(|_| ())
                })
                .await;
        });
    });
    assert!(panicked);
}

#[test]
fn an_async_loader_closure_calling_the_blocking_load_of_its_own_key_panics() {
    // The closure runs (to make its future) after this call leads the load
    // and on its thread, so it is part of the loader as much as the future
    // is: a blocking load of the key from it waits for itself.
    let inner: LocalCache<u32, u32> = LocalCache::new(10);

    let panicked = panics_instead_of_hanging(move || {
        current_thread_runtime().block_on(async {
            let _ = inner
                .get_or_load_async(1, || {
                    let v = inner.get_or_load(1, || Ok::<_, ()>(2)).map_err(|_| ());
                    async move { v }
                })
                .await;
        });
    });
    assert!(panicked);
}

#[test]
fn a_blocking_loader_blocking_on_the_async_load_of_its_own_key_panics() {
    let inner: LocalCache<u32, u32> = LocalCache::new(10);

    let panicked = panics_instead_of_hanging(move || {
        let _ = inner.get_or_load(1, || {
            current_thread_runtime()
                .block_on(inner.get_or_load_async(1, || async { Ok::<_, ()>(2) }))
                .map_err(|_| ())
        });
    });
    assert!(panicked);
}

#[test]
fn a_task_waiting_beside_an_async_loader_on_the_same_thread_still_waits() {
    // Not re-entrant: the follower runs on the loader's thread, but between
    // the loader's polls, not inside one. It must wait and share the value.
    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    let gate = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let rt = current_thread_runtime();
    let (led, followed) = rt.block_on(async {
        let leader = {
            let (cache, gate, started) = (cache.clone(), Arc::clone(&gate), Arc::clone(&started));
            tokio::spawn(async move {
                cache
                    .get_or_load_async(1, || async move {
                        started.notify_one();
                        gate.notified().await;
                        Ok::<_, ()>(5)
                    })
                    .await
            })
        };
        started.notified().await;
        let follower = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load_async(1, || async { Ok::<_, ()>(6) })
                    .await
            })
        };
        until_joined(&cache).await;
        gate.notify_one();
        (
            leader.await.expect("no panic"),
            follower.await.expect("no panic"),
        )
    });
    assert_eq!((led, followed), (Ok(5), Ok(5)));
}

/// Yields until a second caller has missed key 1 (the leader's miss and the
/// follower's), bounded so that a bug fails instead of hanging.
async fn until_joined(cache: &LocalCache<u32, u32>) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while cache.stats().misses < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the follower did not arrive");
}

/// A key whose next drop panics once `bomb` is set (clones share it).
#[derive(Debug, Clone)]
struct Bomb(u32, Arc<std::sync::atomic::AtomicBool>);

impl PartialEq for Bomb {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Bomb {}

impl std::hash::Hash for Bomb {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.1.swap(false, Ordering::SeqCst) {
            panic!("a key's drop panics");
        }
    }
}

#[test]
fn a_key_drop_that_panics_as_a_load_ends_still_gives_its_waiters_the_outcome() {
    // The first key dropped after the loader returns is the in-flight map's
    // copy, as the leader leaves the map. Its panic reaches the leader's
    // caller; the waiters must still get the value (or retry), not wait for
    // a slot that nobody will complete. Likewise when the loader fails.
    for fails in [false, true] {
        let cache: LocalCache<Bomb, u32> = LocalCache::new(10);
        let bomb = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gate = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let rt = current_thread_runtime();
        let (led, followed) = rt.block_on(async {
            let leader = {
                let (cache, bomb, gate, started) =
                    (cache.clone(), bomb.clone(), gate.clone(), started.clone());
                tokio::spawn(async move {
                    let key = Bomb(1, Arc::clone(&bomb));
                    cache
                        .get_or_load_async(key, || async move {
                            started.notify_one();
                            gate.notified().await;
                            bomb.store(true, Ordering::SeqCst);
                            if fails { Err(()) } else { Ok(5) }
                        })
                        .await
                })
            };
            started.notified().await;
            let follower = {
                let (cache, bomb) = (cache.clone(), bomb.clone());
                tokio::spawn(async move {
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        cache.get_or_load_async(Bomb(1, bomb), || async { Ok::<_, ()>(6) }),
                    )
                    .await
                })
            };
            tokio::time::timeout(Duration::from_secs(10), async {
                while cache.stats().misses < 2 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the follower did not arrive");
            gate.notify_one();
            (
                leader.await,
                follower.await.expect("the follower does not panic"),
            )
        });
        assert!(led.is_err(), "the leader's key drop panicked");
        let followed = followed.expect("the follower got the outcome instead of waiting forever");
        // A failure is shared with the waiters, like a value.
        assert_eq!(
            followed.map_err(|e| *e),
            if fails { Err(()) } else { Ok(5) }
        );
    }
}

/// Polls `fut` once, with a waker that does nothing.
fn poll_once<F: std::future::Future>(fut: F) -> std::task::Poll<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::pin!(fut).as_mut().poll(&mut cx)
}

/// Loads a key asynchronously when dropped, and reports whether it got it.
struct LoadsOnDrop {
    cache: LocalCache<u32, u32>,
    done: std::sync::mpsc::Sender<bool>,
}

impl Drop for LoadsOnDrop {
    fn drop(&mut self) {
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_once(self.cache.get_or_load_async(1, || async { Ok::<_, ()>(2) }))
        }));
        let _ = self
            .done
            .send(matches!(loaded, Ok(std::task::Poll::Ready(Ok(2)))));
    }
}

thread_local! {
    static LATE: std::cell::RefCell<Option<LoadsOnDrop>> = const { std::cell::RefCell::new(None) };
}

#[test]
fn an_async_load_from_a_thread_local_destructor_loads() {
    // Thread-locals are destroyed in the reverse order of their first use:
    // `LATE`, used first, is dropped after the cache's own thread-locals,
    // which the load in between used. Its load must still work.
    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        LATE.with(|late| {
            *late.borrow_mut() = Some(LoadsOnDrop {
                cache: cache.clone(),
                done: done_tx,
            });
        });
        let first = poll_once(cache.get_or_load_async(0, || async { Ok::<_, ()>(0) }));
        assert!(matches!(first, std::task::Poll::Ready(Ok(0))));
    });
    let loaded = done
        .recv_timeout(Duration::from_secs(10))
        .expect("the destructor ran");
    assert!(loaded, "the load from a thread-local destructor panicked");
}

#[test]
fn a_key_drop_that_panics_as_a_load_ends_still_lets_the_listener_hear_of_its_evictions() {
    // The loaded value's write evicts key 2; the map's copy of key 1 then
    // panics as it is dropped. The eviction is counted, so the listener
    // must hear of it too.
    let told = Arc::new(AtomicUsize::new(0));
    let cache: LocalCache<Bomb, u32> = {
        let told = Arc::clone(&told);
        LocalCache::builder()
            .max_capacity(1)
            .shards(1)
            .policy(torque_cache::Policy::Lru)
            .eviction_listener(move |k: &Bomb, _, _| {
                if k.0 == 2 {
                    told.fetch_add(1, Ordering::SeqCst);
                }
            })
            .build()
            .expect("valid config")
    };
    cache.insert(Bomb(2, Arc::default()), 2);
    let bomb = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let key = Bomb(1, Arc::clone(&bomb));
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.get_or_load(key, || {
            bomb.store(true, Ordering::SeqCst);
            Ok::<_, ()>(1)
        })
    }));
    assert!(loaded.is_err(), "the key's drop panicked");
    assert_eq!(cache.stats().evictions.capacity, 1);
    assert_eq!(
        told.load(Ordering::SeqCst),
        1,
        "the listener heard of the eviction"
    );
}

/// A weigher or clock that, on its `nth` call, loads key 1 of the cache it
/// serves (blocking), as if the value's weight or the time depended on it.
#[derive(Debug)]
struct LoadsKeyOne {
    cache: std::sync::OnceLock<LocalCache<u32, u32>>,
    /// Calls left before the one that loads; 0 once it has.
    countdown: AtomicUsize,
}

impl LoadsKeyOne {
    fn on_call(nth: usize) -> Arc<Self> {
        Arc::new(Self {
            cache: std::sync::OnceLock::new(),
            countdown: AtomicUsize::new(nth),
        })
    }

    fn call(&self) {
        let fire = self
            .countdown
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            == Ok(1);
        if fire && let Some(cache) = self.cache.get() {
            let _ = cache.get_or_load(1, || Ok::<_, ()>(7));
        }
    }
}

#[derive(Debug)]
struct LoadingClock {
    time: torque_cache::MockClock,
    hook: Arc<LoadsKeyOne>,
}

impl torque_cache::Clock for LoadingClock {
    fn now(&self) -> std::time::Instant {
        self.hook.call();
        self.time.now()
    }
}

/// Runs `f` on its own thread and returns its result or its panic's
/// message; fails the test if it does not finish within 10 s (a hang).
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default()
        });
        done_tx.send(outcome).expect("test alive");
    });
    done.recv_timeout(Duration::from_secs(10))
        .expect("hung: did not finish within 10 s")
}

/// Loads key 1 on a thread of its own, blocking or async, within 10 s.
fn load_key_one(cache: &LocalCache<u32, u32>, async_load: bool) -> Result<Result<u32, ()>, String> {
    let cache = cache.clone();
    bounded(move || {
        let loaded = if async_load {
            current_thread_runtime()
                .block_on(cache.get_or_load_async(1, || async { Ok::<_, ()>(1) }))
        } else {
            cache.get_or_load(1, || Ok::<_, ()>(1))
        };
        loaded.map_err(|_| ())
    })
}

/// The weigher or clock of a load runs as part of that load: waiting from
/// it for the key being loaded waits for itself. It must panic there with
/// the message of every other such wait, abandon the load, and leave the
/// key loadable.
fn assert_self_wait_panics_and_key_stays_loadable(
    cache: &LocalCache<u32, u32>,
    async_load: bool,
    what: &str,
) {
    let outcome = load_key_one(cache, async_load);
    let message = outcome.expect_err(what);
    assert!(
        message.contains("wait for itself forever"),
        "{what}: unexpected panic: {message:?}"
    );
    assert_eq!(
        load_key_one(cache, async_load),
        Ok(Ok(1)),
        "{what}: the key loads afterwards"
    );
}

#[test]
fn regression_a_weigher_that_loads_the_key_being_loaded_panics_instead_of_hanging() {
    for async_load in [false, true] {
        let hook = LoadsKeyOne::on_call(1);
        let cache = {
            let hook = Arc::clone(&hook);
            LocalCache::<u32, u32>::builder()
                .max_capacity(100)
                .weigher(move |_: &u32, _: &u32| {
                    hook.call();
                    1
                })
                .build()
                .expect("valid config")
        };
        hook.cache.set(cache.clone()).expect("set once");
        let what = format!("weigher, async load: {async_load}");
        assert_self_wait_panics_and_key_stays_loadable(&cache, async_load, &what);
    }
}

#[test]
fn regression_a_clock_that_loads_the_key_being_loaded_panics_instead_of_hanging() {
    // Without expiry the load reads the clock twice: as it starts, and as
    // it finishes (to time it).
    for nth in [1, 2] {
        for async_load in [false, true] {
            let hook = LoadsKeyOne::on_call(usize::MAX);
            let cache = LocalCache::<u32, u32>::builder()
                .max_capacity(100)
                .clock(LoadingClock {
                    time: torque_cache::MockClock::new(),
                    hook: Arc::clone(&hook),
                })
                .build()
                .expect("valid config");
            hook.cache.set(cache.clone()).expect("set once");
            hook.countdown.store(nth, Ordering::SeqCst);
            let what = format!("clock read {nth}, async load: {async_load}");
            assert_self_wait_panics_and_key_stays_loadable(&cache, async_load, &what);
        }
    }
}

/// Pending until `open` is set. Registers no waker: the tests below poll
/// their futures by hand, so that each decides when every caller runs.
async fn opened(open: Arc<AtomicBool>) {
    std::future::poll_fn(|_| {
        if open.load(Ordering::SeqCst) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// Polls a pinned future once with `waker`.
fn poll_with<F: std::future::Future + ?Sized>(
    fut: std::pin::Pin<&mut F>,
    waker: &std::task::Waker,
) -> std::task::Poll<F::Output> {
    fut.poll(&mut std::task::Context::from_waker(waker))
}

/// A waker that counts its wakes and, if told to, then panics.
#[derive(Default)]
struct CountingWaker {
    woken: AtomicUsize,
    panics: bool,
}

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.fetch_add(1, Ordering::SeqCst);
        assert!(!self.panics, "a waker that panics");
    }
}

#[test]
fn regression_a_panicking_waker_does_not_leave_the_other_waiters_asleep() {
    // The leader woke its waiting tasks one after another; when one task's
    // waker panicked, the wakers after it were dropped unwoken and their
    // tasks slept for ever on a load that had finished. Likewise when the
    // loader failed.
    for fails in [false, true] {
        let cache: LocalCache<u32, u32> = LocalCache::new(10);
        let open = Arc::new(AtomicBool::new(false));
        let noop = std::task::Waker::noop();
        let mut leader = std::pin::pin!(cache.get_or_load_async(1, {
            let open = Arc::clone(&open);
            || async move {
                opened(open).await;
                if fails { Err(()) } else { Ok(5) }
            }
        }));
        assert!(poll_with(leader.as_mut(), noop).is_pending());
        let bad = Arc::new(CountingWaker {
            panics: true,
            ..CountingWaker::default()
        });
        let good = Arc::new(CountingWaker::default());
        let waiter = |v: u32| cache.get_or_load_async(1, move || async move { Ok::<_, ()>(v) });
        let mut first = std::pin::pin!(waiter(6));
        let mut second = std::pin::pin!(waiter(7));
        assert!(poll_with(first.as_mut(), &Arc::clone(&bad).into()).is_pending());
        assert!(poll_with(second.as_mut(), &Arc::clone(&good).into()).is_pending());
        open.store(true, Ordering::SeqCst);
        let led = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_with(leader.as_mut(), noop)
        }));
        assert_eq!(bad.woken.load(Ordering::SeqCst), 1);
        assert_eq!(
            good.woken.load(Ordering::SeqCst),
            1,
            "fails: {fails}: the waiter after the panicking waker was woken"
        );
        // The waker's panic reaches the leader's call once all are woken.
        assert!(led.is_err(), "the leader's call resumes the waker's panic");
        let expected = if fails { Err(()) } else { Ok(5) };
        for waiter in [second.as_mut(), first.as_mut()] {
            match poll_with(waiter, noop) {
                std::task::Poll::Ready(got) => assert_eq!(got.map_err(|e| *e), expected),
                std::task::Poll::Pending => panic!("fails: {fails}: a waiter still waits"),
            }
        }
        assert_eq!(
            cache.get(&1),
            expected.ok(),
            "a value is stored, an error not"
        );
        let s = cache.stats();
        assert_eq!(
            (s.loads, s.load_failures),
            if fails { (0, 1) } else { (1, 0) }
        );
    }
}

#[test]
fn regression_a_panicking_waker_does_not_leave_the_other_waiters_asleep_when_the_leader_is_dropped()
{
    // A cancelled leader wakes its waiters to start over; a waker that
    // panicked there left the waiters after it asleep, and nobody loaded.
    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    let noop = std::task::Waker::noop();
    let mut leader = Box::pin(cache.get_or_load_async(1, || async {
        std::future::pending::<()>().await;
        Ok::<_, ()>(5)
    }));
    assert!(poll_with(leader.as_mut(), noop).is_pending());
    let bad = Arc::new(CountingWaker {
        panics: true,
        ..CountingWaker::default()
    });
    let good = Arc::new(CountingWaker::default());
    let waiter = |v: u32| cache.get_or_load_async(1, move || async move { Ok::<_, ()>(v) });
    let mut first = std::pin::pin!(waiter(6));
    let mut second = std::pin::pin!(waiter(7));
    assert!(poll_with(first.as_mut(), &Arc::clone(&bad).into()).is_pending());
    assert!(poll_with(second.as_mut(), &Arc::clone(&good).into()).is_pending());
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(leader)));
    assert_eq!(
        good.woken.load(Ordering::SeqCst),
        1,
        "the waiter after the panicking waker was woken"
    );
    assert!(
        dropped.is_err(),
        "the drop of the leader resumes the waker's panic"
    );
    // The first waiter polled leads a load of its own; the other shares it.
    assert_eq!(poll_with(second.as_mut(), noop), Poll::Ready(Ok(7)));
    assert_eq!(poll_with(first.as_mut(), noop), Poll::Ready(Ok(7)));
    assert_eq!(cache.stats().loads, 1);
}

#[test]
fn regression_a_waiter_that_gets_the_loaded_value_refreshes_its_time_to_idle() {
    // A waiter's read of the key is an access like a `get` hit: it must
    // restart the entry's time-to-idle. Waiters got the value from the
    // load and never touched the entry, so it expired one time-to-idle
    // after the load however often it was asked for.
    for policy in [Policy::Adaptive, Policy::Lru, Policy::Fifo, Policy::Ttl] {
        let clock = MockClock::new();
        let cache: LocalCache<u32, u32> = LocalCache::builder()
            .max_capacity(10)
            .policy(policy)
            .time_to_idle(Duration::from_secs(10))
            .clock(clock.clone())
            .build()
            .expect("valid config");
        let open = Arc::new(AtomicBool::new(false));
        let noop = std::task::Waker::noop();
        let mut leader = std::pin::pin!(cache.get_or_load_async(1, {
            let open = Arc::clone(&open);
            || async move {
                opened(open).await;
                Ok::<_, ()>(5)
            }
        }));
        assert!(poll_with(leader.as_mut(), noop).is_pending());
        let mut waiter = std::pin::pin!(cache.get_or_load_async(1, || async { Ok::<_, ()>(6) }));
        assert!(poll_with(waiter.as_mut(), noop).is_pending());
        open.store(true, Ordering::SeqCst);
        // Stored at 0 s, idle until 10 s.
        assert_eq!(poll_with(leader.as_mut(), noop), Poll::Ready(Ok(5)));
        clock.advance(Duration::from_secs(8));
        // The waiter reads it at 8 s: idle until 18 s.
        assert_eq!(poll_with(waiter.as_mut(), noop), Poll::Ready(Ok(5)));
        clock.advance(Duration::from_secs(4));
        assert_eq!(
            cache.get(&1),
            Some(5),
            "{policy:?}: the waiter's read at 8 s refreshed the time-to-idle"
        );
    }
}

#[test]
fn regression_a_waiter_that_gets_the_loaded_value_counts_as_a_use_for_lru() {
    // Like a `get` hit, a waiter's read makes the key the most recently
    // used; it did not, so the key was evicted first though just read.
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(2)
        .shards(1)
        .policy(Policy::Lru)
        .build()
        .expect("valid config");
    let open = Arc::new(AtomicBool::new(false));
    let noop = std::task::Waker::noop();
    let mut leader = std::pin::pin!(cache.get_or_load_async(1, {
        let open = Arc::clone(&open);
        || async move {
            opened(open).await;
            Ok::<_, ()>(1)
        }
    }));
    assert!(poll_with(leader.as_mut(), noop).is_pending());
    let mut waiter = std::pin::pin!(cache.get_or_load_async(1, || async { Ok::<_, ()>(6) }));
    assert!(poll_with(waiter.as_mut(), noop).is_pending());
    open.store(true, Ordering::SeqCst);
    assert_eq!(poll_with(leader.as_mut(), noop), Poll::Ready(Ok(1)));
    cache.insert(2, 2);
    // Key 1 is read after key 2 was written ...
    assert_eq!(poll_with(waiter.as_mut(), noop), Poll::Ready(Ok(1)));
    // ... so key 2 is the least recently used.
    cache.insert(3, 3);
    assert_eq!((cache.get(&1), cache.get(&2)), (Some(1), None));
    // A waiter's read is counted in no statistic: its call missed once.
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.loads), (1, 3, 1));
}

/// A clock that, on its `nth` read from when it is armed, writes key 1 to
/// the cache it serves and then moves on by `then`: as if another caller's
/// load of the key finished just then.
#[derive(Debug)]
struct WritingClock {
    time: MockClock,
    cache: std::sync::OnceLock<LocalCache<u32, u32>>,
    countdown: AtomicUsize,
    then: Duration,
}

impl torque_cache::Clock for WritingClock {
    fn now(&self) -> std::time::Instant {
        let fire = self
            .countdown
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            == Ok(1);
        if fire && let Some(cache) = self.cache.get() {
            cache.insert(1, 5);
            self.time.advance(self.then);
        }
        self.time.now()
    }
}

#[test]
fn regression_a_caller_that_finds_the_value_on_its_re_read_refreshes_its_time_to_idle() {
    // A caller whose `get` missed and whose re-read (under the in-flight
    // map's lock) found the value that a load had just stored returned it
    // without touching the entry: the time-to-idle ran from the store.
    for async_load in [false, true] {
        let time = MockClock::new();
        let clock = Arc::new(WritingClock {
            time: time.clone(),
            cache: std::sync::OnceLock::new(),
            countdown: AtomicUsize::new(0),
            then: Duration::from_secs(8),
        });
        let cache: LocalCache<u32, u32> = LocalCache::builder()
            .max_capacity(10)
            .time_to_idle(Duration::from_secs(10))
            .clock(SharedClock(Arc::clone(&clock)))
            .build()
            .expect("valid config");
        clock.cache.set(cache.clone()).expect("set once");
        // The `get` reads the clock first; the re-read second: the value
        // is written at 0 s between the two, and read at 8 s.
        clock.countdown.store(2, Ordering::SeqCst);
        let got = if async_load {
            match poll_once(cache.get_or_load_async(1, || async { Ok::<_, ()>(6) })) {
                Poll::Ready(got) => got,
                Poll::Pending => panic!("nothing to wait for"),
            }
        } else {
            cache.get_or_load(1, || Ok::<_, ()>(6))
        };
        assert_eq!(got, Ok(5), "the re-read found the written value");
        time.advance(Duration::from_secs(4));
        assert_eq!(
            cache.get(&1),
            Some(5),
            "async: {async_load}: the read at 8 s refreshed the time-to-idle"
        );
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.loads), (1, 1, 0));
    }
}

/// A clock shared with the test.
#[derive(Debug)]
struct SharedClock<C>(Arc<C>);

impl<C: torque_cache::Clock> torque_cache::Clock for SharedClock<C> {
    fn now(&self) -> std::time::Instant {
        self.0.now()
    }
}

/// A value whose clone panics once, on the `nth` clone from when it is
/// armed (clones share the countdown).
#[derive(Debug)]
struct CloneBomb(u32, Arc<AtomicUsize>);

impl Clone for CloneBomb {
    fn clone(&self) -> Self {
        let fire = self
            .1
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            == Ok(1);
        assert!(!fire, "a value's clone panics");
        Self(self.0, Arc::clone(&self.1))
    }
}

#[test]
fn regression_a_value_clone_that_panics_as_a_load_ends_does_not_wedge_its_waiters() {
    // A finishing load clones its value to store it and again to hand it
    // to its waiters. The second clone ran after the load had left the
    // in-flight map and no longer counted as abandoned on a panic, so a
    // panic there left the slot running for ever: every waiter waited on
    // a load that nobody would complete.
    for nth in [1, 2] {
        let cache: LocalCache<u32, CloneBomb> = LocalCache::new(10);
        let countdown = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicBool::new(false));
        let noop = std::task::Waker::noop();
        let mut leader = std::pin::pin!(cache.get_or_load_async(1, {
            let (open, countdown) = (Arc::clone(&open), Arc::clone(&countdown));
            move || async move {
                opened(open).await;
                countdown.store(nth, Ordering::SeqCst);
                Ok::<_, ()>(CloneBomb(5, countdown))
            }
        }));
        assert!(poll_with(leader.as_mut(), noop).is_pending());
        let woken = Arc::new(CountingWaker::default());
        let mut waiter = std::pin::pin!(cache.get_or_load_async(1, {
            let countdown = Arc::clone(&countdown);
            || async move { Ok::<_, ()>(CloneBomb(6, countdown)) }
        }));
        assert!(poll_with(waiter.as_mut(), &Arc::clone(&woken).into()).is_pending());
        open.store(true, Ordering::SeqCst);
        let led = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_with(leader.as_mut(), noop)
        }));
        assert!(led.is_err(), "clone {nth}: the leader's clone panicked");
        assert_eq!(
            woken.woken.load(Ordering::SeqCst),
            1,
            "clone {nth}: the waiter was woken"
        );
        // The load was abandoned: the waiter runs its own.
        match poll_with(waiter.as_mut(), noop) {
            Poll::Ready(got) => assert_eq!(got.map(|v| v.0), Ok(6), "clone {nth}"),
            Poll::Pending => panic!("clone {nth}: the waiter waits for ever"),
        }
        assert_eq!(cache.get(&1).map(|v| v.0), Some(6));
    }
}

/// A key whose `Eq` panics once, on its next call after `bomb` is set
/// (clones share it).
#[derive(Debug, Clone)]
struct EqBomb(u32, Arc<AtomicBool>);

impl PartialEq for EqBomb {
    fn eq(&self, other: &Self) -> bool {
        assert!(!self.1.swap(false, Ordering::SeqCst), "a key's eq panics");
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
fn regression_a_key_eq_that_panics_as_a_load_leaves_the_map_does_not_wedge_the_key() {
    // A finishing load looks its key up in the in-flight map to leave it
    // (the key's `Eq`, user code). A panic there left the slot in the map
    // and running, after the load had been marked done: its waiters and
    // every later caller of the key waited for ever.
    for fails in [false, true] {
        let cache: LocalCache<EqBomb, u32> = LocalCache::new(10);
        let bomb = Arc::new(AtomicBool::new(false));
        let key = || EqBomb(1, Arc::clone(&bomb));
        let open = Arc::new(AtomicBool::new(false));
        let noop = std::task::Waker::noop();
        let mut leader = std::pin::pin!(cache.get_or_load_async(key(), {
            let (open, bomb) = (Arc::clone(&open), Arc::clone(&bomb));
            move || async move {
                opened(open).await;
                bomb.store(true, Ordering::SeqCst);
                if fails { Err(()) } else { Ok(5) }
            }
        }));
        assert!(poll_with(leader.as_mut(), noop).is_pending());
        let woken = Arc::new(CountingWaker::default());
        let mut waiter =
            std::pin::pin!(cache.get_or_load_async(key(), || async { Ok::<_, ()>(6) }));
        assert!(poll_with(waiter.as_mut(), &Arc::clone(&woken).into()).is_pending());
        open.store(true, Ordering::SeqCst);
        let led = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_with(leader.as_mut(), noop)
        }));
        assert!(led.is_err(), "fails: {fails}: the key's eq panicked");
        assert!(
            !bomb.load(Ordering::SeqCst),
            "the eq that panicked was the map's"
        );
        assert_eq!(
            woken.woken.load(Ordering::SeqCst),
            1,
            "fails: {fails}: woken"
        );
        let expected = if fails { Err(()) } else { Ok(5) };
        match poll_with(waiter.as_mut(), noop) {
            Poll::Ready(got) => assert_eq!(got.map_err(|e| *e), expected, "fails: {fails}"),
            Poll::Pending => panic!("fails: {fails}: the waiter waits for ever"),
        }
        // The key is not wedged: it loads again once removed.
        cache.remove(&key());
        match poll_once(cache.get_or_load_async(key(), || async { Ok::<_, ()>(7) })) {
            Poll::Ready(got) => assert_eq!(got.map_err(|e| *e), Ok(7), "fails: {fails}"),
            Poll::Pending => panic!("fails: {fails}: a later load waits for ever"),
        }
    }
}

#[test]
fn a_waiter_with_another_error_type_runs_its_own_loader_when_the_load_fails() {
    // The failed load's error is a `String`; the waiter's loader returns
    // `()` errors, so it cannot be handed that error and loads itself.
    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    let open = Arc::new(AtomicBool::new(false));
    let noop = std::task::Waker::noop();
    let mut leader = std::pin::pin!(cache.get_or_load_async(1, {
        let open = Arc::clone(&open);
        || async move {
            opened(open).await;
            Err::<u32, _>("db down".to_string())
        }
    }));
    assert!(poll_with(leader.as_mut(), noop).is_pending());
    let mut waiter = std::pin::pin!(cache.get_or_load_async(1, || async { Ok::<_, ()>(6) }));
    assert!(poll_with(waiter.as_mut(), noop).is_pending());
    open.store(true, Ordering::SeqCst);
    match poll_with(leader.as_mut(), noop) {
        Poll::Ready(Err(e)) => assert_eq!(*e, "db down"),
        other => panic!("the leader's load failed: {other:?}"),
    }
    assert_eq!(poll_with(waiter.as_mut(), noop), Poll::Ready(Ok(6)));
    let s = cache.stats();
    assert_eq!((s.loads, s.load_failures), (1, 1));
}

#[test]
fn regression_a_key_eq_that_panics_as_a_panicking_loader_is_abandoned_does_not_abort() {
    // The loader panics; the load's guard, dropped while that panic
    // unwinds, leaves the in-flight map, which runs the key's `Eq`. Its
    // panic there was a panic in a drop during unwinding: the process
    // aborted. Now it is caught, the load is abandoned, and the key loads.
    let cache: LocalCache<EqBomb, u32> = LocalCache::new(10);
    let bomb = Arc::new(AtomicBool::new(false));
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.get_or_load(EqBomb(1, Arc::clone(&bomb)), || -> Result<u32, ()> {
            bomb.store(true, Ordering::SeqCst);
            panic!("a loader bug")
        })
    }));
    assert!(loaded.is_err(), "the loader's panic reaches its caller");
    assert!(
        !bomb.load(Ordering::SeqCst),
        "the key's eq panicked as the load left"
    );
    match poll_once(cache.get_or_load_async(EqBomb(1, bomb), || async { Ok::<_, ()>(7) })) {
        Poll::Ready(got) => assert_eq!(got.map_err(|e| *e), Ok(7)),
        Poll::Pending => panic!("a later load waits for ever"),
    }
}

/// Loads key 1 (blocking) when dropped, as a loader's cleanup might.
struct LoadsKeyOneOnDrop(LocalCache<u32, u32>);

impl Drop for LoadsKeyOneOnDrop {
    fn drop(&mut self) {
        assert_eq!(self.0.get_or_load(1, || Ok::<_, ()>(9)), Ok(9));
    }
}

#[test]
fn regression_a_cancelled_loader_whose_drop_loads_its_key_does_not_hang() {
    // Dropping a leader's future dropped its loader's future first, with
    // the load still in flight: a loader whose drop loads its own key (a
    // cleanup that refills the cache) waited for the load it was part of,
    // for ever. The load is now abandoned first, so that load is a new one.
    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    let outcome = bounded({
        let cache = cache.clone();
        move || {
            let inner = cache.clone();
            let mut leader = Box::pin(cache.get_or_load_async(1, move || async move {
                let _cleanup = LoadsKeyOneOnDrop(inner);
                std::future::pending::<()>().await;
                Ok::<_, ()>(5)
            }));
            assert!(poll_with(leader.as_mut(), std::task::Waker::noop()).is_pending());
            drop(leader);
        }
    });
    assert_eq!(
        outcome,
        Ok(()),
        "the cancelled loader's drop loaded the key"
    );
    assert_eq!(cache.get(&1), Some(9));
}

/// A clock that runs `ahead` of the shared time on one thread: that
/// thread's reads are later than every other thread's, however the
/// threads interleave.
#[derive(Debug)]
struct AheadOnOneThread {
    time: MockClock,
    thread: std::sync::OnceLock<std::thread::ThreadId>,
    ahead: Duration,
}

impl torque_cache::Clock for AheadOnOneThread {
    fn now(&self) -> std::time::Instant {
        let now = self.time.now();
        if self.thread.get() == Some(&std::thread::current().id()) {
            now + self.ahead
        } else {
            now
        }
    }
}

#[test]
fn regression_a_blocking_waiter_that_gets_the_loaded_value_refreshes_its_time_to_idle() {
    // The blocking counterpart of the async test above: the waiting thread
    // reads at 8 s a value stored at 0 s (whether it waited for the load,
    // or came as it ended and found the value on its re-read).
    let clock = Arc::new(AheadOnOneThread {
        time: MockClock::new(),
        thread: std::sync::OnceLock::new(),
        ahead: Duration::from_secs(8),
    });
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(10)
        .policy(Policy::Lru)
        .time_to_idle(Duration::from_secs(10))
        .clock(SharedClock(Arc::clone(&clock)))
        .build()
        .expect("valid config");
    let started = AtomicBool::new(false);
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            cache.get_or_load(1, || {
                started.store(true, Ordering::SeqCst);
                // Until the waiter has missed.
                while cache.stats().misses < 2 {
                    std::thread::yield_now();
                }
                Ok::<_, ()>(5)
            })
        });
        let waiter = s.spawn(|| {
            clock
                .thread
                .set(std::thread::current().id())
                .expect("set once");
            // Until the leader is loading.
            while !started.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            cache.get_or_load(1, || Ok::<_, ()>(6))
        });
        assert_eq!(leader.join().expect("no panic"), Ok(5));
        assert_eq!(waiter.join().expect("no panic"), Ok(5));
    });
    clock.time.advance(Duration::from_secs(12));
    assert_eq!(
        cache.get(&1),
        Some(5),
        "the waiter's read at 8 s refreshed the time-to-idle"
    );
}

#[test]
fn regression_a_loader_that_panics_counts_as_a_load_failure() {
    // A panicking loader was counted in no load statistic: a service whose
    // loader crashed on every call showed no failed loads at all.
    let cache: LocalCache<u32, u32> = LocalCache::new(10);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.get_or_load(1, || -> Result<u32, ()> { panic!("loader bug") })
    }));
    assert!(outcome.is_err());
    let s = cache.stats();
    assert_eq!((s.loads, s.load_failures), (0, 1), "{s:?}");
    // An async loader that panics, likewise; one whose leader is cancelled
    // (dropped) is no failure: it did not fail, nobody waited for it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(cache.get_or_load_async(2, || async {
            if true {
                panic!("async loader bug");
            }
            Ok::<u32, ()>(2)
        }))
    }));
    assert!(outcome.is_err());
    assert_eq!(cache.stats().load_failures, 2);
    let noop = std::task::Waker::noop();
    let mut cancelled =
        Box::pin(cache.get_or_load_async(3, std::future::pending::<Result<u32, ()>>));
    assert!(poll_with(cancelled.as_mut(), noop).is_pending());
    drop(cancelled);
    let s = cache.stats();
    assert_eq!((s.loads, s.load_failures), (0, 2), "{s:?}");
    // A loader that returned a value is one load, even if storing it then
    // panics (a weigher bug): not a failure too.
    let cache: LocalCache<u32, u32> = LocalCache::builder()
        .max_capacity(10)
        .weigher(|_: &u32, v: &u32| if *v == 9 { panic!("weigher bug") } else { 1 })
        .build()
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.get_or_load(1, || Ok::<_, ()>(9))
    }));
    assert!(outcome.is_err());
    let s = cache.stats();
    assert_eq!((s.loads, s.load_failures), (1, 0), "{s:?}");
}
