//! A fresh user's service, written from the README, docs/cache.md,
//! docs/parallel.md and the rustdoc only: request handlers read account
//! summaries through a `torque_cache::LocalCache` (`get_or_load_async`
//! over a slow simulated backend on tokio's paused clock), a CPU batch
//! scores many rows with `Processor` (`Cpu`), an I/O fan-out runs under the
//! adaptive limiter (`Async`), a `Blocking` batch calls a synchronous
//! function, and a `Batcher` coalesces writes that invalidate the cache.
//! The cache's time-to-live, weigher, eviction listener and stats, and the
//! processor's stats, are checked as a user would read them. Assertions are
//! on values and counts only; time is tokio's paused clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use torque_cache::{Clock, LocalCache, RemovalCause};
use torque_parallel::batch::{Batcher, FlushError};
use torque_parallel::{ItemError, Processor};

/// The cache's clock, following tokio's (paused) clock, so that a
/// time-to-live runs out when the test advances time. The docs say to pass
/// a custom [`Clock`]; this is the one a tokio user writes.
#[derive(Debug, Clone, Copy)]
struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Summary {
    id: u64,
    balance: i64,
    name: String,
}

#[derive(Debug)]
struct BackendError(String);

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backend: {}", self.0)
    }
}

impl std::error::Error for BackendError {}

/// The "database": balances by account, a 20 ms round trip per query, and
/// a count of queries so that stampede protection can be seen.
#[derive(Debug, Default)]
struct Backend {
    balances: Mutex<HashMap<u64, i64>>,
    queries: AtomicUsize,
}

impl Backend {
    fn with_accounts(n: u64) -> Arc<Self> {
        let backend = Backend::default();
        {
            let mut b = backend.balances.lock();
            for id in 0..n {
                b.insert(id, 100 * id as i64);
            }
        }
        Arc::new(backend)
    }

    async fn fetch_summary(&self, id: u64) -> Result<Summary, BackendError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let balance = self.balances.lock().get(&id).copied();
        match balance {
            Some(balance) => Ok(Summary {
                id,
                balance,
                name: format!("account-{id}"),
            }),
            None => Err(BackendError(format!("no account {id}"))),
        }
    }

    /// The synchronous driver call a `Blocking` batch makes.
    fn fetch_summary_blocking(&self, id: u64) -> Result<Summary, BackendError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let balance = self.balances.lock().get(&id).copied();
        balance
            .map(|balance| Summary {
                id,
                balance,
                name: format!("account-{id}"),
            })
            .ok_or_else(|| BackendError(format!("no account {id}")))
    }

    async fn apply_deposits(&self, batch: &[(u64, i64)]) -> Result<(), BackendError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut b = self.balances.lock();
        for (id, amount) in batch {
            *b.get_mut(id)
                .ok_or_else(|| BackendError(format!("no account {id}")))? += amount;
        }
        Ok(())
    }
}

type Departures = Arc<Mutex<Vec<(u64, RemovalCause)>>>;

fn summaries(departures: &Departures) -> LocalCache<u64, Arc<Summary>> {
    let log = Arc::clone(departures);
    LocalCache::builder()
        .max_capacity(4_096) // bytes, with the weigher
        .weigher(|_: &u64, s: &Arc<Summary>| (64 + s.name.len()) as u32)
        .time_to_live(Duration::from_secs(30))
        .eviction_listener(move |k: &u64, _: &Arc<Summary>, cause| log.lock().push((*k, cause)))
        .clock(TokioClock)
        .build()
        .expect("valid cache config")
}

/// The handler: `GET /accounts/{id}/summary`.
async fn get_summary(
    cache: &LocalCache<u64, Arc<Summary>>,
    backend: &Arc<Backend>,
    id: u64,
) -> Result<Arc<Summary>, Arc<BackendError>> {
    let backend = Arc::clone(backend);
    cache
        .get_or_load_async(id, || async move {
            backend.fetch_summary(id).await.map(Arc::new)
        })
        .await
}

fn score(s: &Summary) -> u64 {
    // Some CPU work per row.
    let mut h = s.id ^ (s.balance as u64);
    for _ in 0..64 {
        h = h
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    h % 1_000
}

#[tokio::test(start_paused = true)]
async fn concurrent_handlers_share_one_load_and_errors_are_not_cached() {
    let backend = Backend::with_accounts(10);
    let departures = Departures::default();
    let cache = summaries(&departures);

    // 50 requests for the same account at once: one query.
    let mut handlers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let cache = cache.clone();
        let backend = Arc::clone(&backend);
        handlers.spawn(async move { get_summary(&cache, &backend, 3).await });
    }
    while let Some(r) = handlers.join_next().await {
        assert_eq!(r.unwrap().unwrap().balance, 300);
    }
    assert_eq!(backend.queries.load(Ordering::Relaxed), 1);
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, 50, "{stats:?}");
    assert_eq!(stats.loads, 1, "{stats:?}");
    // The load took 20 ms of the cache's (tokio's) clock.
    assert_eq!(stats.total_load_time, Duration::from_millis(20));

    // An error reaches the caller with its message and is not cached.
    let e = get_summary(&cache, &backend, 99).await.unwrap_err();
    assert_eq!(e.to_string(), "backend: no account 99");
    let _ = get_summary(&cache, &backend, 99).await.unwrap_err();
    assert_eq!(backend.queries.load(Ordering::Relaxed), 3);
    assert_eq!(cache.stats().load_failures, 2);
    // `?` into a boxed error works (Arc<E: Error> is an Error).
    let boxed: Result<(), Box<dyn std::error::Error>> = async {
        get_summary(&cache, &backend, 98).await?;
        Ok(())
    }
    .await;
    assert!(boxed.unwrap_err().to_string().contains("98"));
}

#[tokio::test(start_paused = true)]
async fn ttl_follows_tokio_time_and_the_listener_hears_it() {
    let backend = Backend::with_accounts(10);
    let departures = Departures::default();
    let cache = summaries(&departures);

    get_summary(&cache, &backend, 1).await.unwrap();
    tokio::time::advance(Duration::from_secs(29)).await;
    get_summary(&cache, &backend, 1).await.unwrap();
    assert_eq!(backend.queries.load(Ordering::Relaxed), 1, "hit within ttl");
    tokio::time::advance(Duration::from_secs(2)).await;
    get_summary(&cache, &backend, 1).await.unwrap();
    assert_eq!(
        backend.queries.load(Ordering::Relaxed),
        2,
        "reloaded after ttl"
    );
    assert_eq!(*departures.lock(), [(1, RemovalCause::Expired)]);
    assert_eq!(cache.stats().evictions.expired, 1);
}

#[tokio::test(start_paused = true)]
async fn weigher_bounds_the_cache_and_capacity_evictions_are_reported() {
    let backend = Backend::with_accounts(200);
    let departures = Departures::default();
    let cache = summaries(&departures);
    for id in 0..200 {
        get_summary(&cache, &backend, id).await.unwrap();
    }
    assert!(cache.weighted_size() <= 4_096, "{}", cache.weighted_size());
    let stats = cache.stats();
    let capacity = departures
        .lock()
        .iter()
        .filter(|(_, c)| *c == RemovalCause::Capacity)
        .count() as u64;
    assert_eq!(stats.evictions.capacity, capacity);
    assert!(capacity > 0);
    assert_eq!(cache.len() as u64 + capacity, 200);
}

/// A deposit goes through the batcher; once its receipt resolves, the
/// handler invalidates the cached summary. A read that started before the
/// write must not leave the old balance cached.
#[tokio::test(start_paused = true)]
async fn batched_writes_invalidate_and_no_stale_summary_stays() {
    let backend = Backend::with_accounts(10);
    let departures = Departures::default();
    let cache = summaries(&departures);

    let sink_backend = Arc::clone(&backend);
    let (batcher, driver) = Batcher::builder()
        .max_size(8)
        .max_linger(Duration::from_millis(2))
        .build(move |rows: Vec<(u64, i64)>| {
            let backend = Arc::clone(&sink_backend);
            async move { backend.apply_deposits(&rows).await }
        })
        .expect("valid batcher");
    let driver = tokio::spawn(driver.run());

    // Warm the cache.
    for id in 0..10 {
        get_summary(&cache, &backend, id).await.unwrap();
    }

    // A slow read of account 4 is in flight while a deposit to it lands.
    let reader = {
        let cache = cache.clone();
        async move {
            cache
                .get_or_load_async(4, || async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    // Read the old balance, then take long to answer.
                    let old = Summary {
                        id: 4,
                        balance: 400,
                        name: "account-4".into(),
                    };
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, BackendError>(Arc::new(old))
                })
                .await
        }
    };
    cache.remove(&4);
    let reader = tokio::spawn(reader);
    tokio::time::sleep(Duration::from_millis(2)).await;

    // 20 deposits from concurrent handlers, coalesced.
    let mut receipts = Vec::new();
    for i in 0..20u64 {
        let id = i % 10;
        receipts.push((id, batcher.send((id, 1)).await.expect("driver running")));
    }
    for (id, receipt) in receipts {
        receipt.await.expect("written");
        cache.remove(&id);
    }
    let old = reader.await.unwrap().unwrap();
    assert_eq!(old.balance, 400, "the waiter gets what its load read");

    // Every account now reads its new balance.
    for id in 0..10 {
        let s = get_summary(&cache, &backend, id).await.unwrap();
        assert_eq!(s.balance, 100 * id as i64 + 2, "account {id}");
    }

    // A failing batch reaches exactly its items, with the sink's error.
    let bad = batcher.send((77, 1)).await.unwrap();
    match bad.await {
        Err(FlushError::Sink(e)) => assert_eq!(e.to_string(), "backend: no account 77"),
        other => panic!("{other:?}"),
    }

    drop(batcher);
    let stats = driver.await.unwrap();
    assert_eq!(stats.items, 21);
    assert!(stats.batches < 21, "{stats:?}");
    assert_eq!(stats.failed_items, 1);
}

#[tokio::test(start_paused = true)]
async fn an_async_fan_out_reads_through_the_cache_under_the_adaptive_limiter() {
    let backend = Backend::with_accounts(100);
    let departures = Departures::default();
    let cache = summaries(&departures);
    let processor = Processor::builder().build().unwrap();

    // A dashboard handler: 100 summaries, some ids twice, one missing.
    let ids: Vec<u64> = (0..100).chain(0..20).chain([1_000]).collect();
    let out = processor
        .async_io()
        .timeout(Duration::from_secs(5))
        .try_map(ids.clone(), |id| {
            let cache = cache.clone();
            let backend = Arc::clone(&backend);
            async move { get_summary(&cache, &backend, id).await }
        })
        .await;
    assert_eq!(out.len(), ids.len());
    for (id, r) in ids.iter().zip(&out) {
        match r {
            Ok(s) => assert_eq!(s.id, *id),
            Err(ItemError::Failed(e)) => {
                assert_eq!(*id, 1_000);
                assert_eq!(e.to_string(), "backend: no account 1000");
            }
            Err(e) => panic!("{id}: {e}"),
        }
    }
    let io = processor.stats().io;
    assert_eq!(io.taken, 121);
    assert_eq!(io.succeeded, 120);
    assert_eq!(io.failed, 1);
    assert_eq!(io.in_flight, 0);
    // One read per item; one query per load (the 4 KiB cache holds about
    // 55 summaries, so some duplicates were evicted and load again).
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, 121, "{stats:?}");
    assert_eq!(
        stats.loads + stats.load_failures,
        backend.queries.load(Ordering::Relaxed) as u64
    );
    assert!(stats.hits >= 1, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn cpu_scores_and_a_blocking_batch_of_sync_calls() {
    let backend = Backend::with_accounts(1_000);
    let processor = Processor::builder()
        .blocking_threads(2)
        .queue_capacity(4)
        .build()
        .unwrap();

    // Blocking: the synchronous driver, from async code.
    let b = Arc::clone(&backend);
    let ids: Vec<u64> = (0..1_000).collect();
    let rows = processor
        .blocking()
        .try_map_async(ids, move |id| b.fetch_summary_blocking(id))
        .await;
    let rows: Vec<Summary> = rows.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(rows[999].balance, 99_900);

    // Cpu: scores in input order, all or nothing.
    let scores = processor.collect(&rows, score).expect("no item panicked");
    assert_eq!(scores.len(), 1_000);
    assert_eq!(scores[7], score(&rows[7]));
    let total = processor
        .map_reduce(&rows, |s| s.balance, || 0, |a, b| a + b)
        .value;
    assert_eq!(total, (0..1_000).map(|i| 100 * i).sum::<i64>());

    // Empty batches of every kind.
    let none: Vec<Summary> = Vec::new();
    assert!(processor.map(&none, score).is_empty());
    assert!(processor.collect(&none, score).unwrap().is_empty());
    assert_eq!(
        processor
            .map_reduce(&none, |s| s.balance, || 0, |a, b| a + b)
            .value,
        0
    );
    assert!(
        processor
            .blocking()
            .map(Vec::<u64>::new(), |x| x)
            .is_empty()
    );
    assert!(
        processor
            .blocking()
            .map_async(Vec::<u64>::new(), |x| x)
            .await
            .is_empty()
    );
    assert!(
        processor
            .async_io()
            .map(Vec::<u64>::new(), |x| async move { x })
            .await
            .is_empty()
    );

    let stats = processor.stats();
    assert_eq!(stats.blocking_threads, 2);
    assert_eq!(stats.blocking_queued, 0);
    assert_eq!(stats.blocking_in_flight_weight, 0);
}

/// A service shutting down drops its processor on a runtime thread while
/// a timed-out request's blocking job still runs, waiting for an answer
/// that a task of that same runtime sends. The drop joined the blocking
/// threads, so it waited for the job, which waited for the runtime the
/// drop was blocking: on a current-thread runtime, until the job gave up.
#[tokio::test(flavor = "current_thread")]
async fn regression_dropping_the_processor_on_a_runtime_does_not_wait_for_a_running_job() {
    let processor = Processor::builder().blocking_threads(1).build().unwrap();
    let (answer_tx, answer_rx) = std::sync::mpsc::channel::<u64>();
    let answer_rx = Mutex::new(answer_rx);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Mutex::new(Some(started_tx));
    let (result_tx, result_rx) = std::sync::mpsc::channel();
    let batch = processor.blocking().map_async(vec![()], move |()| {
        if let Some(tx) = started_tx.lock().take() {
            let _ = tx.send(());
        }
        let got = answer_rx.lock().recv_timeout(Duration::from_secs(60));
        let _ = result_tx.send(got.ok());
    });
    // The request gives up once its job runs: the future is dropped and
    // the job runs on.
    tokio::select! {
        _ = batch => panic!("the job waits for its answer"),
        _ = started_rx => {}
    }
    // The answer comes from a task of this runtime, which the service
    // shuts down meanwhile, dropping its processor.
    let answer = tokio::spawn(async move { answer_tx.send(7).is_ok() });
    drop(processor);
    answer.await.unwrap();
    let got = tokio::task::spawn_blocking(move || result_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the job ends");
    assert_eq!(
        got,
        Some(7),
        "the drop held up the runtime until the job gave up"
    );
}

/// "Never" spelled as a user would: `Duration::MAX` time-to-live, idle
/// time and batch timeout, the heaviest weight, the largest capacity.
#[tokio::test(start_paused = true)]
async fn huge_durations_and_weights_mean_never_and_do_not_panic() {
    let processor = Processor::builder().build().unwrap();
    let out = processor
        .async_io()
        .timeout(Duration::MAX)
        .map(0..3u64, |x| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            x
        })
        .await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");

    let cache: LocalCache<u64, Arc<Summary>> = LocalCache::builder()
        .max_capacity(u64::MAX)
        .weigher(|_: &u64, _: &Arc<Summary>| u32::MAX)
        .time_to_live(Duration::MAX)
        .time_to_idle(Duration::MAX)
        .clock(TokioClock)
        .build()
        .unwrap();
    let s = Arc::new(Summary {
        id: 1,
        balance: 1,
        name: "x".into(),
    });
    cache.insert(1, Arc::clone(&s));
    cache.insert_with_ttl(2, Arc::clone(&s), Duration::MAX);
    tokio::time::advance(Duration::from_secs(1 << 40)).await;
    assert!(cache.get(&1).is_some());
    assert!(cache.get(&2).is_some());
    let v = cache
        .get_or_load_async(3, || async { Ok::<_, BackendError>(s) })
        .await
        .unwrap();
    assert_eq!(v.id, 1);
    assert_eq!(cache.weighted_size(), 3 * u64::from(u32::MAX));
}

/// Half the items of each batch are cache hits (1 ms), half go to a
/// backend of 32 connections (20 ms). The processor's own limiter times
/// whole items, and such a batch's fast half completes first: it took the
/// hits' 1 ms for the backend's no-load latency and held the batch at a
/// limit of 1 (docs/parallel.md, "Items that are not all backend calls").
/// A limiter around the backend call inside the loader times the backend
/// alone, and finds its 32 connections.
#[tokio::test(start_paused = true)]
async fn a_limiter_around_the_backend_call_learns_its_capacity_behind_a_cache() {
    use torque_parallel::limit::{Adaptive, ConcurrencyLimiter, Limiter};

    let backend = Backend::with_accounts(1_000_000);
    let connections = Arc::new(tokio::sync::Semaphore::new(32));
    let cache: LocalCache<u64, Arc<Summary>> = LocalCache::builder()
        .max_capacity(1_000_000)
        .clock(TokioClock)
        .build()
        .unwrap();
    for id in 0..500 {
        let s = Summary {
            id,
            balance: 0,
            name: String::new(),
        };
        cache.insert(id, Arc::new(s));
    }
    let limiter = ConcurrencyLimiter::with_clock(Adaptive::default(), torque_parallel::TokioClock);
    // The batch itself is not what needs limiting.
    let processor = Processor::builder().async_limit(1_000).build().unwrap();

    let mut next_new = 1_000u64;
    let start = tokio::time::Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < Duration::from_secs(20) {
        let ids: Vec<u64> = (0..500u64)
            .map(|i| {
                if (i * 37 + rounds) % 100 < 50 {
                    i
                } else {
                    next_new += 1;
                    next_new
                }
            })
            .collect();
        let out = processor
            .async_io()
            .try_map(ids, |id| {
                let cache = cache.clone();
                let backend = Arc::clone(&backend);
                let connections = Arc::clone(&connections);
                let limiter = limiter.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await; // the handler's own work
                    cache
                        .get_or_load_async(id, || async move {
                            let token = limiter.acquire().await;
                            let _connection = connections.acquire().await.unwrap();
                            let summary = backend.fetch_summary(id).await;
                            match summary {
                                Ok(_) => token.success(),
                                Err(_) => token.ignore(),
                            }
                            summary.map(Arc::new)
                        })
                        .await
                }
            })
            .await;
        assert!(out.iter().all(Result::is_ok));
        rounds += 1;
    }
    assert!(
        (24..=64).contains(&limiter.limit()),
        "the backend has 32 connections; limit {}",
        limiter.limit()
    );
}

/// The processor's own default limiter on the same mix: half the items are
/// cache hits (1 ms), the rest also wait 20 ms for one of 32 connections.
/// A window closed on its first completions — all hits — took 1 ms for the
/// no-load latency and held the batches at a limit of 1 (157 items/s
/// against about 3,000 with the backend's 32 connections busy).
#[tokio::test(start_paused = true)]
async fn regression_the_default_limit_does_not_collapse_when_some_items_are_cache_hits() {
    for hit_percent in [50u64, 75] {
        let connections = Arc::new(tokio::sync::Semaphore::new(32));
        let processor = Processor::builder().build().unwrap();
        let start = tokio::time::Instant::now();
        let mut rounds = 0u64;
        while start.elapsed() < Duration::from_secs(20) {
            let out = processor
                .async_io()
                .map(0..500u64, |i| {
                    let connections = Arc::clone(&connections);
                    async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        if (i * 37 + rounds) % 100 >= hit_percent {
                            let _connection = connections.acquire().await.unwrap();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
                .await;
            assert_eq!(out.len(), 500);
            rounds += 1;
        }
        // 32 connections busy with the misses, plus the hits in flight
        // beside them: a limit of about 34 at 50 % hits, more at 75 %.
        let limit = processor.stats().io.limit;
        assert!(
            limit >= 24,
            "{hit_percent} % hits: the limit fell to {limit} (32 connections)"
        );
    }
}
