//! `LocalCache` as a tokio web service uses it: one cache shared by many
//! request tasks (cloned handles, or an `Arc`), loads that await, time
//! out, are cancelled, fail or panic, loaders that use the cache, and the
//! futures handed to `tokio::spawn`. Time is tokio's paused clock; every
//! assertion is on counts and values, never on how long something took.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Barrier, Notify, oneshot};
use torque_cache::LocalCache;

fn assert_send_static<T: Send + 'static>(_: &T) {}

/// The docs' `get_or_load_async` pattern, moved into `tokio::spawn` as a
/// handler does with a cloned handle: the future must be `Send + 'static`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_future_can_be_spawned_with_a_cloned_handle() {
    let cache: LocalCache<u64, Arc<String>> = LocalCache::new(100);
    let handle = cache.clone();
    let fut = async move {
        handle
            .get_or_load_async(1, || async {
                Ok::<_, std::io::Error>(Arc::new("one".into()))
            })
            .await
    };
    assert_send_static(&fut);
    let v = tokio::spawn(fut).await.unwrap().unwrap();
    assert_eq!(*v, "one");
    let shared = Arc::new(cache);
    let s = Arc::clone(&shared);
    let v = tokio::spawn(async move {
        s.get_or_load_async(1, || async {
            Ok::<_, std::io::Error>(Arc::new("x".into()))
        })
        .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(*v, "one");
}

/// The same key from many tasks on a multi-thread runtime: one loader run,
/// every task gets its value, and each call is one read in the stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_from_many_tasks_loads_once() {
    const TASKS: usize = 64;
    let cache: LocalCache<u64, u64> = LocalCache::new(1_000);
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let started = Arc::new(Barrier::new(TASKS + 1));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (cache, runs, release, started) = (
            cache.clone(),
            Arc::clone(&runs),
            Arc::clone(&release),
            Arc::clone(&started),
        );
        tasks.push(tokio::spawn(async move {
            started.wait().await;
            cache
                .get_or_load_async(7, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    Ok::<_, std::io::Error>(49)
                })
                .await
        }));
    }
    started.wait().await;
    // The leader's loader waits for `release`; it may not have started yet
    // (notify_one stores a permit), so every task is released either way.
    release.notify_one();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 49);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.load_failures, 0);
    assert_eq!(stats.hits + stats.misses, TASKS as u64);
    assert_eq!(cache.get(&7), Some(49));
}

/// A request whose timeout fires while it leads a load: the load is
/// abandoned, a waiting request leads its own, and the key is not wedged.
#[tokio::test(start_paused = true)]
async fn a_timed_out_leader_hands_the_load_over() {
    let cache: LocalCache<u64, u64> = LocalCache::new(100);
    let runs = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (cache, runs) = (cache.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(100),
                cache.get_or_load_async(1, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok::<_, std::io::Error>(1)
                }),
            )
            .await
        })
    };
    tokio::task::yield_now().await;
    let waiter = {
        let (cache, runs) = (cache.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            cache
                .get_or_load_async(1, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok::<_, std::io::Error>(2)
                })
                .await
        })
    };
    assert!(slow.await.unwrap().is_err(), "the leader timed out");
    assert_eq!(waiter.await.unwrap().unwrap(), 2);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(cache.get(&1), Some(2));
    let stats = cache.stats();
    // The cancelled load counts nowhere; the waiter's load counts once.
    assert_eq!((stats.loads, stats.load_failures), (1, 0));
    // Two calls and one `get`: three reads.
    assert_eq!(stats.hits + stats.misses, 3);
}

/// A waiting request that times out leaves the load alone: the leader
/// still stores its value.
#[tokio::test(start_paused = true)]
async fn a_timed_out_waiter_does_not_disturb_the_load() {
    let cache: LocalCache<u64, u64> = LocalCache::new(100);
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load_async(1, || async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok::<_, std::io::Error>(10)
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    let mut waiters = Vec::new();
    for _ in 0..10 {
        let cache = cache.clone();
        waiters.push(tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(10),
                cache.get_or_load_async(1, || async { Ok::<_, std::io::Error>(99) }),
            )
            .await
        }));
    }
    for w in waiters {
        assert!(w.await.unwrap().is_err(), "every waiter timed out");
    }
    assert_eq!(leader.await.unwrap().unwrap(), 10);
    assert_eq!(cache.get(&1), Some(10));
    assert_eq!(cache.stats().loads, 1);
}

/// A request task aborted (client went away) while leading a load.
#[tokio::test(start_paused = true)]
async fn an_aborted_leader_task_does_not_wedge_the_key() {
    let cache: LocalCache<u64, u64> = LocalCache::new(100);
    let (entered_tx, entered) = oneshot::channel();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load_async(1, || async move {
                    entered_tx.send(()).unwrap();
                    std::future::pending::<()>().await;
                    Ok::<_, std::io::Error>(1)
                })
                .await
        })
    };
    entered.await.unwrap();
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load_async(1, || async { Ok::<_, std::io::Error>(2) })
                .await
        })
    };
    tokio::task::yield_now().await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    assert_eq!(waiter.await.unwrap().unwrap(), 2);
    assert_eq!(cache.get(&1), Some(2));
}

#[derive(Debug, PartialEq)]
struct DbDown;

/// A loader error reaches every waiter once and is not cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_error_reaches_every_waiter_and_is_not_cached() {
    const TASKS: usize = 16;
    let cache: LocalCache<u64, u64> = LocalCache::new(100);
    let runs = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let started = Arc::new(Barrier::new(TASKS + 1));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (cache, runs, mut released, started) = (
            cache.clone(),
            Arc::clone(&runs),
            released.clone(),
            Arc::clone(&started),
        );
        tasks.push(tokio::spawn(async move {
            started.wait().await;
            cache
                .get_or_load_async(3, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    released.wait_for(|r| *r).await.unwrap();
                    Err::<u64, _>(DbDown)
                })
                .await
        }));
    }
    started.wait().await;
    // Every loader run is released, also those of tasks that arrive after
    // a failure and run their own.
    release.send(true).unwrap();
    let mut errors = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(e) => {
                assert_eq!(*e, DbDown);
                errors += 1;
            }
            Ok(v) => panic!("no value was loaded, got {v}"),
        }
    }
    assert_eq!(errors, TASKS);
    // Tasks that arrived after the failure ran a loader of their own, so
    // there may be more than one run; each run is one failure.
    let runs = runs.load(Ordering::SeqCst);
    assert!(runs >= 1);
    let stats = cache.stats();
    assert_eq!(stats.load_failures, runs as u64);
    assert_eq!(stats.loads, 0);
    assert_eq!(cache.get(&3), None);
    // Not cached: the next call loads again.
    let v = cache
        .get_or_load_async(3, || async { Ok::<_, DbDown>(9) })
        .await
        .unwrap();
    assert_eq!(v, 9);
}

/// A loader that panics inside a request task: that task's `JoinHandle`
/// reports the panic, a waiter leads its own load, the key works after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_fails_its_task_only() {
    let cache: LocalCache<u64, u64> = LocalCache::new(100);
    let (entered_tx, entered) = oneshot::channel::<()>();
    let release = Arc::new(Notify::new());
    let leader = {
        let (cache, release) = (cache.clone(), Arc::clone(&release));
        tokio::spawn(async move {
            cache
                .get_or_load_async(5, || async move {
                    entered_tx.send(()).unwrap();
                    release.notified().await;
                    panic!("loader bug");
                    #[allow(unreachable_code)]
                    Ok::<u64, std::io::Error>(0)
                })
                .await
        })
    };
    entered.await.unwrap();
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load_async(5, || async { Ok::<_, std::io::Error>(55) })
                .await
        })
    };
    // The waiter may not have joined yet; either way it gets 55.
    release.notify_one();
    assert!(leader.await.unwrap_err().is_panic());
    assert_eq!(waiter.await.unwrap().unwrap(), 55);
    assert_eq!(cache.get(&5), Some(55));
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_failures), (1, 1));
}

/// Loaders that use the cache: read and write other keys, and load other
/// keys (themselves loaded by other tasks at the same time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaders_may_use_the_cache_for_other_keys() {
    const KEYS: u64 = 32;
    let cache: LocalCache<u64, u64> = LocalCache::new(10_000);
    let mut tasks = Vec::new();
    for round in 0..4u64 {
        for key in 0..KEYS {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move {
                let inner = cache.clone();
                cache
                    .get_or_load_async(key, move || async move {
                        // A "dependency" key loaded through the cache:
                        // 1000 + key / 2, so pairs of keys share one.
                        let dep = inner
                            .get_or_load_async(1000 + key / 2, || async move {
                                tokio::task::yield_now().await;
                                Ok::<_, std::io::Error>(key / 2)
                            })
                            .await?;
                        let _ = inner.get(&(2000 + key));
                        inner.insert(2000 + key, round);
                        tokio::task::yield_now().await;
                        Ok::<_, Arc<std::io::Error>>(dep * 10)
                    })
                    .await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for key in 0..KEYS {
        assert_eq!(cache.get(&key), Some(key / 2 * 10));
        assert_eq!(cache.get(&(1000 + key / 2)), Some(key / 2));
    }
    let stats = cache.stats();
    // Every key and every dependency loaded exactly once.
    assert_eq!(stats.loads, KEYS + KEYS / 2);
}

/// Many distinct keys at once, half of them cancelled by a timeout: the
/// other half all stored, nothing left in flight (a later call for a
/// cancelled key loads at once).
#[tokio::test(start_paused = true)]
async fn many_keys_some_cancelled_none_lost() {
    const KEYS: u64 = 200;
    let cache: LocalCache<u64, u64> = LocalCache::new(10_000);
    let mut tasks = Vec::new();
    for key in 0..KEYS {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let ms = if key % 2 == 0 { 10 } else { 1_000 };
            tokio::time::timeout(
                Duration::from_millis(100),
                cache.get_or_load_async(key, move || async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<_, std::io::Error>(key)
                }),
            )
            .await
        }));
    }
    for (key, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.is_ok(), key % 2 == 0, "key {key}");
    }
    for key in 0..KEYS {
        assert_eq!(cache.get(&key), (key % 2 == 0).then_some(key));
    }
    for key in (1..KEYS).step_by(2) {
        let v = cache
            .get_or_load_async(key, move || async move { Ok::<_, std::io::Error>(key + 1) })
            .await
            .unwrap();
        assert_eq!(v, key + 1);
    }
    let stats = cache.stats();
    assert_eq!(stats.loads, KEYS);
    // KEYS timed calls, KEYS gets, KEYS / 2 reloads: each one read.
    assert_eq!(stats.hits + stats.misses, KEYS * 2 + KEYS / 2);
}

/// A loader that holds no cache lock across its await: while one load
/// waits, every other operation on the cache, from other tasks, goes on.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pending_load_blocks_no_other_operation() {
    let cache: LocalCache<u64, u64> = LocalCache::new(100);
    let release = Arc::new(Notify::new());
    let leader = {
        let (cache, release) = (cache.clone(), Arc::clone(&release));
        tokio::spawn(async move {
            cache
                .get_or_load_async(1, || async move {
                    release.notified().await;
                    Ok::<_, std::io::Error>(1)
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    // On a current-thread runtime, a lock held across the loader's await
    // would deadlock these calls.
    cache.insert(2, 2);
    assert_eq!(cache.get(&2), Some(2));
    assert_eq!(cache.remove(&2), Some(2));
    cache.retain(|_, _| true);
    cache.run_pending_tasks();
    let _ = cache.stats();
    let _ = cache.len();
    let v = cache
        .get_or_load_async(3, || async { Ok::<_, std::io::Error>(3) })
        .await
        .unwrap();
    assert_eq!(v, 3);
    release.notify_one();
    // `retain` superseded the load of 1: the leader gets its value, which
    // is not stored.
    assert_eq!(leader.await.unwrap().unwrap(), 1);
    assert_eq!(cache.get(&1), None);
}

/// A helper spelled as a service's repository layer would: generic over
/// the loader, returning an owned future to spawn.
fn load_user(
    cache: &LocalCache<u64, Arc<String>>,
    id: u64,
) -> impl Future<Output = Result<Arc<String>, Arc<std::io::Error>>> + Send + 'static {
    let cache = cache.clone();
    async move {
        cache
            .get_or_load_async(id, move || async move {
                tokio::task::yield_now().await;
                Ok(Arc::new(format!("user {id}")))
            })
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_helper_returns_a_send_future() {
    let cache: LocalCache<u64, Arc<String>> = LocalCache::new(100);
    let handles: Vec<_> = (0..8)
        .map(|i| tokio::spawn(load_user(&cache, i % 3)))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(*h.await.unwrap().unwrap(), format!("user {}", i % 3));
    }
    assert_eq!(cache.stats().loads, 3);
}
