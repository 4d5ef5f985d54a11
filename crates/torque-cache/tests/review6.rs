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

/// Whether keys `1..=keys` all load (or are cached) after a cycle was
/// broken, within the 10 s bound: nothing is left wedged.
fn every_key_loads(cache: &LocalCache<u64, u64>, keys: u64) -> bool {
    let c = cache.clone();
    bounded(move || (1..=keys).all(|k| c.get_or_load(k, || Ok::<_, ()>(k * 10)).is_ok()))
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
            assert!(
                every_key_loads(&cache, threads),
                "{threads} threads, round {round}"
            );
        }
    }
}

/// The async form of the cycle above: key 1's async loader awaits the load
/// of key 2, whose async loader (another task) awaits the load of key 1.
/// Each task waited for the other forever (and so did every later caller of
/// either key). Now the wait that closes the cycle panics in its task, its
/// load is abandoned, and the other task's load finishes; every key loads
/// afterwards. Tasks on a multi-thread runtime and on a current-thread one
/// (where both loaders are polled by one thread, one after the other).
#[test]
fn regression_async_loaders_waiting_for_each_others_keys_do_not_hang() {
    for multi_thread in [false, true] {
        for tasks in [2u64, 3] {
            for round in 0..10 {
                let cache: LocalCache<u64, u64> = LocalCache::new(100);
                let c = cache.clone();
                let outcomes = bounded(move || {
                    let runtime = if multi_thread {
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(2)
                            .build()
                    } else {
                        tokio::runtime::Builder::new_current_thread().build()
                    }
                    .expect("runtime");
                    runtime.block_on(async move {
                        let barrier = Arc::new(tokio::sync::Barrier::new(tasks as usize));
                        let handles: Vec<_> = (1..=tasks)
                            .map(|mine| {
                                let other = mine % tasks + 1;
                                let (cache, barrier) = (c.clone(), Arc::clone(&barrier));
                                tokio::spawn(async move {
                                    let inner = cache.clone();
                                    cache
                                        .get_or_load_async(mine, || async move {
                                            // Every load is running before
                                            // any waits for the next.
                                            barrier.wait().await;
                                            inner
                                                .get_or_load_async(other, || async move {
                                                    Ok::<_, ()>(other * 10)
                                                })
                                                .await
                                                .map(|v| v + mine)
                                                .map_err(|_| ())
                                        })
                                        .await
                                })
                            })
                            .collect();
                        let mut outcomes = Vec::new();
                        for handle in handles {
                            // A panicked task is an `Err` of its handle.
                            outcomes.push(matches!(handle.await, Ok(Ok(_))));
                        }
                        outcomes
                    })
                });
                assert!(
                    outcomes.iter().any(|ok| *ok),
                    "multi-thread {multi_thread}, {tasks} tasks, round {round}: a load \
                     finishes: {outcomes:?}"
                );
                assert!(
                    every_key_loads(&cache, tasks),
                    "multi-thread {multi_thread}, {tasks} tasks, round {round}"
                );
            }
        }
    }
}

/// A cycle through a blocking loader and an async one: key 1's blocking
/// loader (a thread) waits for key 2, whose async loader (a task) awaits
/// key 1. Either wait may come second; the one that closes the cycle
/// panics, and the other load finishes.
#[test]
fn regression_a_cycle_through_a_blocking_and_an_async_loader_does_not_hang() {
    for round in 0..20 {
        let cache: LocalCache<u64, u64> = LocalCache::new(100);
        let c = cache.clone();
        let outcomes = bounded(move || {
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let (cache, b) = (c.clone(), Arc::clone(&barrier));
            let thread = std::thread::spawn(move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    cache.get_or_load(1, || {
                        b.wait();
                        cache
                            .get_or_load(2, || Ok::<_, ()>(20))
                            .map(|v| v + 1)
                            .map_err(|_| ())
                    })
                }))
                .is_ok_and(|r| r.is_ok())
            });
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let task = runtime.block_on(async move {
                let inner = c.clone();
                tokio::spawn(async move {
                    c.get_or_load_async(2, || async move {
                        // Blocks this runtime's only thread until the
                        // other load runs too: nothing else runs here.
                        barrier.wait();
                        inner
                            .get_or_load_async(1, || async { Ok::<_, ()>(10) })
                            .await
                            .map(|v| v + 2)
                            .map_err(|_| ())
                    })
                    .await
                })
                .await
                .is_ok_and(|r| r.is_ok())
            });
            [thread.join().expect("caught"), task]
        });
        assert!(
            outcomes.iter().any(|ok| *ok),
            "round {round}: a load finishes: {outcomes:?}"
        );
        assert!(every_key_loads(&cache, 2), "round {round}");
    }
}

/// A loader that polls a wait for another key once and then hands it to a
/// plain task (a prefetch it no longer waits for) is not left listed as
/// waiting for that key. The wait's edges in the wait-for graph were taken
/// at its first poll and kept until it ended, so key 1's load still
/// counted as waiting for key 2 after it had handed that wait away; key
/// 2's loader awaiting key 1 then "closed a cycle" and panicked, although
/// key 1's loader was about to finish without key 2. Now a wait's edges
/// follow the loaders it is polled from at each poll.
#[test]
fn regression_a_wait_handed_from_a_loader_to_a_plain_task_is_not_taken_for_a_cycle() {
    use std::future::Future;
    use std::task::Poll;
    use tokio::sync::oneshot;

    for multi_thread in [false, true] {
        for round in 0..10 {
            let cache: LocalCache<u64, u64> = LocalCache::new(100);
            let c = cache.clone();
            let (one, two) = bounded(move || {
                let runtime = if multi_thread {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .build()
                } else {
                    tokio::runtime::Builder::new_current_thread().build()
                }
                .expect("runtime");
                runtime.block_on(async move {
                    let (started2_tx, started2) = oneshot::channel::<()>();
                    let (go2_tx, go2) = oneshot::channel::<()>();
                    let (waiting1_tx, waiting1) = oneshot::channel::<()>();
                    // Key 2's loader, in a task of its own: once told, it
                    // needs key 1.
                    let c2 = c.clone();
                    let two = tokio::spawn(async move {
                        let inner = c2.clone();
                        c2.get_or_load_async(2, || async move {
                            started2_tx.send(()).expect("test alive");
                            go2.await.expect("told");
                            let one = inner.get_or_load_async(1, || async { Ok::<_, ()>(1) });
                            // The wait below is polled in this same poll.
                            let _ = waiting1_tx.send(());
                            one.await.map(|v| v + 20).map_err(|_| ())
                        })
                        .await
                    });
                    started2.await.expect("key 2 loading");
                    // Key 1's loader polls a wait for key 2 once, hands it
                    // to a plain task, and finishes without it.
                    let c1 = c.clone();
                    let one = tokio::spawn(async move {
                        let inner = c1.clone();
                        c1.get_or_load_async(1, || async move {
                            let prefetch = inner.clone();
                            let mut wait2 = Box::pin(async move {
                                prefetch
                                    .get_or_load_async(2, || async { Ok::<_, ()>(99) })
                                    .await
                            });
                            let first = std::future::poll_fn(|cx| {
                                Poll::Ready(wait2.as_mut().poll(cx).is_pending())
                            })
                            .await;
                            assert!(first, "key 2 is still loading");
                            let (polled_tx, polled) = oneshot::channel::<()>();
                            tokio::spawn(async move {
                                let again = std::future::poll_fn(|cx| {
                                    Poll::Ready(wait2.as_mut().poll(cx).is_pending())
                                })
                                .await;
                                let _ = polled_tx.send(());
                                if again {
                                    let _ = wait2.await;
                                }
                            });
                            polled.await.expect("handed over");
                            go2_tx.send(()).expect("key 2 loading");
                            waiting1.await.expect("key 2 waits for key 1");
                            Ok::<_, ()>(10)
                        })
                        .await
                    });
                    let one = one.await.map(|r| r.map_err(|_| ()));
                    let two = two.await.map(|r| r.map_err(|_| ()));
                    (one.ok(), two.ok())
                })
            });
            let context = format!("multi-thread {multi_thread}, round {round}");
            assert_eq!(one, Some(Ok(10)), "{context}");
            assert_eq!(two, Some(Ok(30)), "{context}: key 2's loader panicked");
        }
    }
}

/// A wait's edges in the wait-for graph named its loaders by their link's
/// address, without holding the link: a wait that outlived the load it
/// was polled from (key 1's loader polled a wait for key 2 once and kept
/// it aside, then finished) left an edge "the load at this address waits
/// for key 2", and the next load whose link took the freed address (key
/// 3, on the same thread: the allocator reuses it most of the time)
/// inherited it. Key 2's loader awaiting key 3 then "closed a cycle" and
/// panicked, although key 3's loader waits for nothing. Now the graph
/// holds the links it names, so no address is reused while it is listed.
/// (Before the fix the allocator reused the address in most rounds, so
/// twenty rounds found it.)
#[test]
fn regression_a_new_load_does_not_inherit_a_finished_loads_edges_by_its_address() {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;
    use tokio::sync::oneshot;

    type Kept = Arc<std::sync::Mutex<Vec<Pin<Box<dyn Future<Output = ()> + Send>>>>>;
    for round in 0..20 {
        let cache: LocalCache<u64, u64> = LocalCache::new(100);
        let c = cache.clone();
        let outcome = bounded(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let kept: Kept = Arc::default();
                let (started2_tx, started2) = oneshot::channel::<()>();
                let (go2_tx, go2) = oneshot::channel::<()>();
                // Key 2's loader: once told, it needs key 3.
                let c2 = c.clone();
                let two = tokio::spawn(async move {
                    let inner = c2.clone();
                    c2.get_or_load_async(2, || async move {
                        started2_tx.send(()).expect("test alive");
                        go2.await.expect("told");
                        inner
                            .get_or_load_async(3, || async { Ok::<_, ()>(0) })
                            .await
                            .map(|v| v + 20)
                            .map_err(|_| ())
                    })
                    .await
                });
                started2.await.expect("key 2 loading");
                // Key 1's loader polls a wait for key 2 once, keeps it
                // aside and finishes.
                let (c1, keep) = (c.clone(), Arc::clone(&kept));
                let one = tokio::spawn(async move {
                    let inner = c1.clone();
                    c1.get_or_load_async(1, || async move {
                        let mut wait2: Pin<Box<dyn Future<Output = ()> + Send>> =
                            Box::pin(async move {
                                let _ = inner
                                    .get_or_load_async(2, || async { Ok::<_, ()>(99) })
                                    .await;
                            });
                        let pending = std::future::poll_fn(|cx| {
                            Poll::Ready(wait2.as_mut().poll(cx).is_pending())
                        })
                        .await;
                        assert!(pending, "key 2 is still loading");
                        keep.lock().expect("not poisoned").push(wait2);
                        Ok::<_, ()>(1)
                    })
                    .await
                });
                assert_eq!(one.await.expect("no panic"), Ok(1));
                // Key 3's load, in a new link, waits for nothing but a
                // signal.
                let (go3_tx, go3) = oneshot::channel::<()>();
                let c3 = c.clone();
                let three = tokio::spawn(async move {
                    c3.get_or_load_async(3, || async move {
                        go3.await.expect("told");
                        Ok::<_, ()>(3)
                    })
                    .await
                });
                tokio::task::yield_now().await;
                go2_tx.send(()).expect("key 2 loading");
                tokio::task::yield_now().await;
                go3_tx.send(()).expect("key 3 loading");
                let three = three.await.map(|r| r.map_err(|_| ()));
                let two = two.await.map(|r| r.map_err(|_| ()));
                kept.lock().expect("not poisoned").clear();
                (three.ok(), two.ok())
            })
        });
        assert_eq!(outcome, (Some(Ok(3)), Some(Ok(23))), "round {round}");
    }
}

/// A blocking loader that waits for another key through the async call,
/// driving it with `block_on` on its own thread (a sync loader reusing
/// async code): key 1's blocking loader block_on's the load of key 2,
/// whose blocking loader (another thread) waits for key 1. The async wait
/// was not counted as the thread's (only async loaders' polls were), so
/// both threads waited for each other forever. Now the wait that closes
/// the cycle panics, its load is abandoned and the other finishes.
#[test]
fn regression_a_blocking_loader_that_block_ons_an_async_wait_is_part_of_a_cycle() {
    for round in 0..20 {
        let cache: LocalCache<u64, u64> = LocalCache::new(100);
        let c = cache.clone();
        let outcomes = bounded(move || {
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let handles: Vec<_> = [(1u64, 2u64, true), (2, 1, false)]
                .into_iter()
                .map(|(mine, other, via_async)| {
                    let (cache, barrier) = (c.clone(), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            cache.get_or_load(mine, || {
                                // Both loads run before either waits.
                                barrier.wait();
                                let inner = if via_async {
                                    futures_executor_block_on(
                                        cache.get_or_load_async(other, || async move {
                                            Ok::<_, ()>(other * 10)
                                        }),
                                    )
                                } else {
                                    cache.get_or_load(other, || Ok::<_, ()>(other * 10))
                                };
                                inner.map(|v| v + mine).map_err(|_| ())
                            })
                        }))
                        .is_ok_and(|r| r.is_ok())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|t| t.join().expect("caught"))
                .collect::<Vec<bool>>()
        });
        assert!(
            outcomes.iter().any(|ok| *ok),
            "round {round}: a load finishes: {outcomes:?}"
        );
        assert!(every_key_loads(&cache, 2), "round {round}");
    }
}

/// `block_on` on the calling thread, as a sync loader would drive async
/// code (a current-thread tokio runtime, made for the call).
fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A blocking load is named in the wait-for graph by its thread, and a
/// wait polled inside its loader was listed as that thread's: a wait that
/// outlived the loader (key 1's blocking loader polled a wait for key 2
/// once and kept it aside, then finished) left an edge "this thread waits
/// for key 2" that every later load on the thread inherited. Key 3's
/// blocking load on the same thread, which waits for nothing, then looked
/// like a waiter for key 2, and key 2's loader waiting for key 3 "closed a
/// cycle" and panicked. The blocking analogue of the test above: a kept
/// wait holds up the load it was polled from, not its thread's later ones.
#[test]
fn regression_a_wait_kept_from_a_finished_blocking_loader_is_not_taken_for_the_threads() {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::mpsc;
    use std::task::{Context, Waker};

    type Kept = Pin<Box<dyn Future<Output = ()> + Send>>;
    let c: LocalCache<u64, u64> = LocalCache::new(100);
    let (two, three) = bounded(move || {
        let (started2_tx, started2) = mpsc::channel::<()>();
        let (go2_tx, go2) = mpsc::channel::<()>();
        let (polled_tx, polled) = mpsc::channel::<bool>();
        // Key 2's blocking loader, on a thread of its own: once told, it
        // polls a wait for key 3 once (the cycle check runs in that poll)
        // and says whether the poll panicked.
        let c2 = c.clone();
        let two = std::thread::spawn(move || {
            c2.get_or_load(2, || {
                started2_tx.send(()).expect("test alive");
                go2.recv().expect("told");
                let mut wait3 = Box::pin(c2.get_or_load_async(3, || async { Ok::<_, ()>(0) }));
                let poll = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    wait3
                        .as_mut()
                        .poll(&mut Context::from_waker(Waker::noop()))
                        .is_pending()
                }));
                polled_tx.send(poll.is_ok()).expect("test alive");
                drop(wait3);
                poll.map(|_| 20).map_err(|_| ())
            })
        });
        started2.recv().expect("key 2 loading");
        // Key 1's blocking loader, on this thread, polls a wait for key 2
        // once, keeps it aside and finishes.
        let mut kept: Option<Kept> = None;
        let one = c.get_or_load(1, || {
            let inner = c.clone();
            let mut wait2: Kept = Box::pin(async move {
                let _ = inner
                    .get_or_load_async(2, || async { Ok::<_, ()>(99) })
                    .await;
            });
            let pending = wait2
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending();
            assert!(pending, "key 2 is still loading");
            kept = Some(wait2);
            Ok::<_, ()>(1)
        });
        assert_eq!(one, Ok(1));
        // Key 3's blocking load, on this same thread, waits for nothing but
        // key 2's loader's poll of a wait for it.
        let three = c.get_or_load(3, || {
            go2_tx.send(()).expect("key 2 loading");
            Ok::<_, ()>(if polled.recv().expect("key 2 polled") {
                3
            } else {
                0
            })
        });
        let two = two.join().map(|r| r.map_err(|_| ()));
        drop(kept);
        (two.ok(), three)
    });
    assert_eq!(three, Ok(3), "key 2's poll of a wait for key 3 panicked");
    assert_eq!(two, Some(Ok(20)));
}
