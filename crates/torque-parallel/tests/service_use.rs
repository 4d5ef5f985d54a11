//! `Processor` and the limiters as a tokio web service uses them: one
//! processor shared by many request tasks, batches inside handlers
//! (`tokio::spawn`ed, so their futures must be `Send + 'static`), request
//! timeouts and client disconnects that drop a batch mid-way, per-item
//! timeouts, cancel tokens tied to a request, and the tower layer. Time is
//! tokio's paused clock; assertions are on values and counts only.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use torque_parallel::limit::{Algorithm, ConcurrencyLimiter, Fixed, Limiter};
use torque_parallel::{CancelToken, IoStats, ItemError, Processor};

fn assert_send_static<T: Send + 'static>(_: &T) {}

fn adds_up(io: &IoStats) -> bool {
    io.taken
        == io.completed()
            + io.panicked
            + io.cancelled
            + io.in_flight as u64
            + io.queued as u64
            + io.awaiting_permit as u64
}

/// Waits until all `limit` permits of `limiter` are free, by taking them
/// (woken as each comes back, not polled): tasks aborted on a multi-thread
/// runtime are dropped by its workers, on other threads. Fails after 10 s
/// of real time (a leaked permit) instead of hanging.
async fn all_permits_back(limiter: &ConcurrencyLimiter<Fixed>, limit: usize) {
    let all = async {
        let mut tokens = Vec::new();
        for _ in 0..limit {
            tokens.push(limiter.acquire().await);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("a permit was never given back");
    assert_eq!(limiter.stats().in_flight, 0);
}

/// Every batch future of the public API, built inside a handler from a
/// cloned processor, can be handed to `tokio::spawn`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_futures_are_send_and_static() {
    let processor = Processor::builder().async_limit(4).build().unwrap();

    let p = processor.clone();
    let io = async move { p.async_io().map(0..10u64, |x| async move { x * 2 }).await };
    assert_send_static(&io);
    let out = tokio::spawn(io).await.unwrap();
    assert_eq!(*out[9].as_ref().unwrap(), 18);

    let p = processor.clone();
    let blocking = async move { p.blocking().map_async(vec![1u64, 2, 3], |x| x + 1).await };
    assert_send_static(&blocking);
    let out = tokio::spawn(blocking).await.unwrap();
    assert_eq!(*out[2].as_ref().unwrap(), 4);

    let p = processor.clone();
    let hybrid = async move {
        p.hybrid()
            .map(vec![1u64, 2, 3], |x| x * x, |y| async move { y + 1 })
            .await
    };
    assert_send_static(&hybrid);
    let out = tokio::spawn(hybrid).await.unwrap();
    assert_eq!(*out[2].as_ref().unwrap(), 10);

    let p = processor.clone();
    let completed = async move {
        use futures_util::StreamExt;
        p.async_io()
            .as_completed(0..5u64, |x| async move { Ok::<_, std::io::Error>(x) })
            .count()
            .await
    };
    assert_send_static(&completed);
    assert_eq!(tokio::spawn(completed).await.unwrap(), 5);

    let limiter = ConcurrencyLimiter::new(Fixed::new(2));
    let l = limiter.clone();
    let acquire = async move {
        let token = l.acquire().await;
        token.success();
    };
    assert_send_static(&acquire);
    tokio::spawn(acquire).await.unwrap();

    let p = processor.clone();
    let with_limiter = async move {
        p.async_io()
            .with_limiter(limiter)
            .timeout(Duration::from_secs(1))
            .try_map(0..3u64, |x| async move { Ok::<_, std::io::Error>(x) })
            .await
    };
    assert_send_static(&with_limiter);
    assert_eq!(tokio::spawn(with_limiter).await.unwrap().len(), 3);
}

/// Many concurrent requests share one processor (and its limiter): every
/// item of every request comes back, the limit is never exceeded, and
/// nothing is left in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_share_one_processor() {
    const REQUESTS: u64 = 32;
    const ITEMS: u64 = 20;
    let processor = Processor::builder().async_limit(3).build().unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut requests = Vec::new();
    for r in 0..REQUESTS {
        let (p, running, peak) = (processor.clone(), Arc::clone(&running), Arc::clone(&peak));
        requests.push(tokio::spawn(async move {
            p.async_io()
                .map(0..ITEMS, move |i| {
                    let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        r * 1000 + i
                    }
                })
                .await
        }));
    }
    for (r, req) in requests.into_iter().enumerate() {
        let out = req.await.unwrap();
        let got: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
        let want: Vec<u64> = (0..ITEMS).map(|i| r as u64 * 1000 + i).collect();
        assert_eq!(got, want);
    }
    assert!(peak.load(Ordering::SeqCst) <= 3, "limit 3 exceeded");
    let io = processor.stats().io;
    assert_eq!(io.succeeded, REQUESTS * ITEMS);
    assert_eq!(io.in_flight, 0);
    assert!(adds_up(&io), "{io:?}");
}

/// A request timeout (`tokio::time::timeout` around the handler's batch)
/// drops the batch mid-way: after the runtime's next turn its permits are
/// back, the stats add up, and the next request runs at full limit.
#[tokio::test(start_paused = true)]
async fn a_request_timeout_drops_its_batch_cleanly() {
    let processor = Processor::builder().async_limit(2).build().unwrap();
    let limiter = ConcurrencyLimiter::new(Fixed::new(2));
    let out = tokio::time::timeout(
        Duration::from_millis(50),
        processor
            .async_io()
            .with_limiter(limiter.clone())
            .map(0..10u64, |ms| async move {
                tokio::time::sleep(Duration::from_millis(20 * (ms + 1))).await;
                ms
            }),
    )
    .await;
    assert!(out.is_err(), "the request timed out");
    // Inline items (current-thread runtime) are dropped with the batch.
    tokio::task::yield_now().await;
    assert_eq!(limiter.stats().in_flight, 0);
    let io = processor.stats().io;
    assert!(adds_up(&io), "{io:?}");
    assert_eq!(io.in_flight, 0);
    assert!(io.cancelled >= 1);
    // The next request gets both permits.
    let a = limiter.try_acquire().expect("permit 1");
    let b = limiter.try_acquire().expect("permit 2");
    drop((a, b));
}

/// Spawns a batch of 100 items that never end on `limiter` (of limit 4),
/// waits until four run, and aborts it, as a client that goes away.
async fn abort_a_batch_with_four_items_running<A: Algorithm>(
    processor: &Processor,
    limiter: &ConcurrencyLimiter<A>,
) {
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let batch = {
        let (p, limiter, started) = (processor.clone(), limiter.clone(), Arc::clone(&started));
        tokio::spawn(async move {
            p.async_io()
                .with_limiter(limiter)
                .map(0..100u64, move |x| {
                    let started = Arc::clone(&started);
                    async move {
                        started.add_permits(1);
                        std::future::pending::<()>().await;
                        x
                    }
                })
                .await
        })
    };
    let _four = started.acquire_many(4).await.unwrap();
    batch.abort();
    assert!(batch.await.unwrap_err().is_cancelled());
}

/// The same on a multi-thread runtime, where items are tasks: the dropped
/// batch's tasks are aborted and give their permits back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_batch_of_tasks_gives_back_every_permit() {
    let processor = Processor::builder().build().unwrap();
    let limiter = ConcurrencyLimiter::new(Fixed::new(4));
    abort_a_batch_with_four_items_running(&processor, &limiter).await;
    // The aborted tasks are dropped by the workers at their next turns.
    all_permits_back(&limiter, 4).await;
    let io = processor.stats().io;
    assert_eq!(io.in_flight, 0);
    assert!(adds_up(&io), "{io:?}");
    assert_eq!(io.cancelled, io.taken);
}

/// A limit of `limit` that records, each time a permit comes back, how
/// many items the processor still counts in flight and how many permits the
/// limiter still has out: an item must leave the processor's in-flight
/// count before its permit goes back, or a caller that waits for the permit
/// (as `all_permits_back` does) reads a count that is not final yet.
struct SeesTheProcessor {
    limit: usize,
    processor: Arc<std::sync::OnceLock<Processor>>,
    /// (processor's in-flight items, limiter's permits still out) at each
    /// return; for an ignored permit, the second is worked out from the
    /// `limit` permits the test holds at once.
    seen: Arc<std::sync::Mutex<Vec<(usize, usize)>>>,
    ignored: usize,
}

impl std::fmt::Debug for SeesTheProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeesTheProcessor").finish_non_exhaustive()
    }
}

impl SeesTheProcessor {
    fn in_flight(&self) -> usize {
        self.processor
            .get()
            .expect("set before the batch")
            .stats()
            .io
            .in_flight
    }
}

impl Algorithm for SeesTheProcessor {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &torque_parallel::limit::Sample) -> usize {
        let seen = (self.in_flight(), sample.remaining);
        self.seen.lock().unwrap().push(seen);
        self.limit
    }

    fn ignored(&mut self, _admission: u64) {
        self.ignored += 1;
        // Past `limit`, these are the test's own permits.
        if let Some(out) = self.limit.checked_sub(self.ignored) {
            let seen = (self.in_flight(), out);
            self.seen.lock().unwrap().push(seen);
        }
    }
}

type Seen = Arc<std::sync::Mutex<Vec<(usize, usize)>>>;

fn seeing_processor(limit: usize) -> (Processor, ConcurrencyLimiter<SeesTheProcessor>, Seen) {
    let processor = Processor::builder().build().unwrap();
    let cell = Arc::new(std::sync::OnceLock::new());
    cell.set(processor.clone()).unwrap();
    let seen = Seen::default();
    let limiter = ConcurrencyLimiter::new(SeesTheProcessor {
        limit,
        processor: cell,
        seen: Arc::clone(&seen),
        ignored: 0,
    });
    (processor, limiter, seen)
}

/// `returns` permits came back, and as each did, the processor counted no
/// more items in flight than the limiter had permits out.
#[track_caller]
fn assert_counted_before_each_return(seen: &Seen, returns: usize) {
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), returns, "{seen:?}");
    for (in_flight, permits_out) in seen {
        assert!(
            in_flight <= permits_out,
            "{in_flight} items in flight on {permits_out} permits"
        );
    }
}

/// The race behind a CI failure of the test above: an aborted item gave
/// its permit back before it left the processor's in-flight count, so the
/// test, woken by the permit, could read `in_flight == 1`. Here the
/// algorithm reads the count as each permit comes back, on the thread that
/// drops the item, so the old order fails every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_item_leaves_in_flight_before_its_permit_goes_back() {
    let (processor, limiter, seen) = seeing_processor(4);
    abort_a_batch_with_four_items_running(&processor, &limiter).await;
    // Held until `seen` is read: dropped, they would be reported too.
    let wait = async {
        let mut tokens = Vec::new();
        for _ in 0..4 {
            tokens.push(limiter.acquire().await);
        }
        tokens
    };
    let _tokens = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("a permit was never given back");
    assert_counted_before_each_return(&seen, 4);
}

/// The same for items that end: each has left the in-flight count when the
/// limiter learns its latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_that_ends_leaves_in_flight_before_its_permit_goes_back() {
    let (processor, limiter, seen) = seeing_processor(4);
    let out = processor
        .async_io()
        .with_limiter(limiter)
        .map(0..20u64, |x| async move {
            tokio::task::yield_now().await;
            x
        })
        .await;
    assert_eq!(out.len(), 20);
    assert_counted_before_each_return(&seen, 20);
}

/// A cancel token tied to one request stops that request's batch only:
/// another request on the same processor is untouched.
#[tokio::test(start_paused = true)]
async fn a_request_cancel_token_stops_only_that_request() {
    let processor = Processor::builder().async_limit(8).build().unwrap();
    let token = CancelToken::new();
    // Told by the doomed batch's first item, so the cancel comes while the
    // batch runs (waited on, not slept for).
    let started = Arc::new(tokio::sync::Notify::new());
    let doomed = {
        let p = processor.with_cancel(token.clone());
        let started = Arc::clone(&started);
        tokio::spawn(async move {
            p.async_io()
                .map(0..5u64, move |x| {
                    let started = Arc::clone(&started);
                    async move {
                        started.notify_one();
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        x
                    }
                })
                .await
        })
    };
    let fine = {
        let p = processor.clone();
        tokio::spawn(async move {
            p.async_io()
                .map(0..5u64, |x| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    x
                })
                .await
        })
    };
    // On the paused clock an item that never starts lets time run out here.
    tokio::time::timeout(Duration::from_secs(1), started.notified())
        .await
        .expect("the doomed batch started");
    token.cancel();
    let doomed = doomed.await.unwrap();
    assert!(!doomed.is_empty());
    assert!(
        doomed
            .iter()
            .all(|r| r.as_ref().is_err_and(ItemError::is_cancelled))
    );
    let fine = fine.await.unwrap();
    assert!(fine.iter().all(Result::is_ok), "{fine:?}");
    let io = processor.stats().io;
    assert!(adds_up(&io), "{io:?}");
    assert_eq!(io.in_flight, 0);
}

/// Per-item timeouts with the paused clock: slow items time out, others
/// succeed, and the counters say so.
#[tokio::test(start_paused = true)]
async fn per_item_timeouts_in_a_handler() {
    let processor = Processor::builder()
        .async_limit(4)
        .item_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let out = processor
        .async_io()
        .map([10u64, 500, 20, 1_000, 30], |ms| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        })
        .await;
    let timed_out: Vec<bool> = out
        .iter()
        .map(|r| r.as_ref().is_err_and(ItemError::is_timeout))
        .collect();
    assert_eq!(timed_out, [false, true, false, true, false]);
    let io = processor.stats().io;
    assert_eq!((io.succeeded, io.timed_out), (3, 2));
    assert!(adds_up(&io), "{io:?}");
}

/// A `Blocking` batch of a request that goes away: its queued items are
/// dropped, and the pool serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_blocking_batch_leaves_the_pool_usable() {
    let processor = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(2)
        .build()
        .unwrap();
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let gate = Arc::new(std::sync::Mutex::new(gate_rx));
    let ran = Arc::new(AtomicUsize::new(0));
    let batch = {
        let (p, gate, ran) = (processor.clone(), Arc::clone(&gate), Arc::clone(&ran));
        tokio::spawn(async move {
            p.blocking()
                .map_async((0..50u64).collect(), move |x| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.lock().unwrap().recv();
                    x
                })
                .await
        })
    };
    // The first job runs (and waits at the gate); the request goes away.
    while ran.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    batch.abort();
    assert!(batch.await.unwrap_err().is_cancelled());
    drop(gate_tx); // the running job ends
    let out = processor
        .blocking()
        .map_async(vec![1u64, 2, 3], |x| x * 3)
        .await;
    assert_eq!(
        out.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [3, 6, 9]
    );
    // Only the one job that was running when the batch went away ran
    // (plus those a worker had already taken from the queue).
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

/// A burst of requests queued on a limiter, all timing out at the instant
/// the permit frees up: no permit is lost or leaked, the queue empties,
/// and the next request gets the permit.
#[tokio::test(start_paused = true)]
async fn a_timeout_storm_on_the_limiter_loses_no_permit() {
    let limiter = ConcurrencyLimiter::new(Fixed::new(1));
    let holder = limiter.try_acquire().unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for _ in 0..50 {
        let (limiter, got) = (limiter.clone(), Arc::clone(&got));
        waiters.push(tokio::spawn(async move {
            if let Ok(token) =
                tokio::time::timeout(Duration::from_millis(10), limiter.acquire()).await
            {
                got.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                token.success();
            }
        }));
    }
    tokio::task::yield_now().await;
    assert_eq!(limiter.stats().waiting, 50);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        holder.success();
    });
    for w in waiters {
        w.await.unwrap();
    }
    let stats = limiter.stats();
    assert_eq!((stats.in_flight, stats.waiting), (0, 0), "{stats:?}");
    assert_eq!(stats.succeeded, 1 + got.load(Ordering::SeqCst) as u64);
    drop(limiter.try_acquire().expect("the permit is free"));
}

mod tower_stack {
    use std::future::{Future, poll_fn};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use torque_parallel::limit::LimitLayer;
    use tower_layer::Layer;
    use tower_service::Service;

    use super::*;

    #[derive(Clone)]
    struct Backend;

    impl Service<u64> for Backend {
        type Response = u64;
        type Error = &'static str;
        type Future = Pin<Box<dyn Future<Output = Result<u64, &'static str>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, ms: u64) -> Self::Future {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if ms == 0 { Err("bad request") } else { Ok(ms) }
            })
        }
    }

    /// As axum drives a layered service: a clone per request, `poll_ready`
    /// then `call`, with a request timeout around both. Requests that
    /// time out waiting for readiness or for the response give their
    /// permits back; errors and successes are classified as documented.
    #[tokio::test(start_paused = true)]
    async fn per_request_clones_under_a_request_timeout() {
        let limiter = ConcurrencyLimiter::new(Fixed::new(2));
        let service = LimitLayer::new(limiter.clone()).layer(Backend);
        let mut requests = Vec::new();
        for i in 0..12u64 {
            let mut svc = service.clone();
            // 100 ms each, every fourth a fast error.
            let ms = if i % 4 == 3 { 0 } else { 100 };
            requests.push(tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(250), async move {
                    poll_fn(|cx| svc.poll_ready(cx)).await?;
                    svc.call(ms).await
                })
                .await
            }));
        }
        let mut ok = 0;
        let mut err = 0;
        let mut timed_out = 0;
        for r in requests {
            match r.await.unwrap() {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(_)) => err += 1,
                Err(_) => timed_out += 1,
            }
        }
        assert_eq!(ok + err + timed_out, 12);
        assert!(
            timed_out > 0 && ok > 0,
            "ok {ok}, err {err}, timed out {timed_out}"
        );
        let stats = limiter.stats();
        assert_eq!((stats.in_flight, stats.waiting), (0, 0), "{stats:?}");
        assert_eq!(stats.succeeded, ok);
        // Errors, and responses dropped by the timeout, are ignored.
        assert!(stats.ignored >= err);
        // A fresh request gets through at once.
        let mut svc = service.clone();
        poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        assert_eq!(svc.call(5).await, Ok(5));
    }

    /// A service made ready and then dropped without a call (the client
    /// went away between `poll_ready` and `call`) gives its permit back.
    #[tokio::test(start_paused = true)]
    async fn a_ready_service_dropped_before_call_returns_its_permit() {
        let limiter = ConcurrencyLimiter::new(Fixed::new(1));
        let service = LimitLayer::new(limiter.clone()).layer(Backend);
        let mut a = service.clone();
        poll_fn(|cx| a.poll_ready(cx)).await.unwrap();
        assert_eq!(limiter.stats().in_flight, 1);
        let mut b = service.clone();
        let waiting = tokio::spawn(async move {
            poll_fn(|cx| b.poll_ready(cx)).await.unwrap();
            b.call(1).await
        });
        tokio::task::yield_now().await;
        assert_eq!(limiter.stats().waiting, 1);
        drop(a);
        assert_eq!(waiting.await.unwrap(), Ok(1));
        let stats = limiter.stats();
        assert_eq!((stats.in_flight, stats.waiting, stats.succeeded), (0, 0, 1));
    }
}

/// The docs' advice for a `Cpu` batch in an async handler: run it on
/// `spawn_blocking`, so that the runtime's thread stays free. Here an item
/// waits for a message that another task on the same current-thread
/// runtime sends: called directly on the runtime's only thread the batch
/// would wait for ever (nothing else can run while it blocks).
#[tokio::test(flavor = "current_thread")]
async fn a_cpu_batch_in_an_async_handler_runs_on_spawn_blocking() {
    let processor = Processor::builder().build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let rx = std::sync::Mutex::new(rx);
    let p = processor.clone();
    let batch = tokio::task::spawn_blocking(move || {
        let items: Vec<u64> = (0..1_000).collect();
        p.map(&items, move |&x| {
            if x == 0 {
                rx.lock().unwrap().recv().unwrap()
            } else {
                x
            }
        })
    });
    let sender = tokio::spawn(async move {
        tokio::task::yield_now().await;
        tx.send(42).unwrap();
    });
    let out = batch.await.unwrap();
    sender.await.unwrap();
    assert_eq!(*out[0].as_ref().unwrap(), 42);
    assert_eq!(*out[999].as_ref().unwrap(), 999);
}

/// The items of a `Cpu` batch read through a `LocalCache` whose blocking
/// loader runs a `Blocking` batch (a synchronous driver): a service's
/// "compute over rows, each row's reference data cached" handler. The
/// loading item's rayon thread used to run the pool's pending rayon jobs
/// while it waited for the blocking batch: the other items of the same
/// batch, nested inside the loader, on the loader's own thread. Each asked
/// for the key being loaded beneath it and failed with the cache's "called
/// get_or_load for the same key on its own thread" panic, though no loader
/// asked for its own key (32 of 64 items on one rayon thread, 44 on two).
/// Now the waiting thread runs only its own batch's jobs that no blocking
/// thread has started: the siblings wait their turn (on one rayon thread,
/// until the load is done; on two, the other thread's wait for the load),
/// and every item reads the one loaded value.
#[test]
fn regression_cpu_items_are_not_nested_in_a_cache_load_that_waits_for_a_blocking_batch() {
    use torque_cache::LocalCache;

    const N: usize = 64;
    for cpu_threads in [1, 2] {
        let processor = Processor::builder()
            .cpu_threads(cpu_threads)
            .blocking_threads(1)
            .parallel_threshold(Duration::from_nanos(1))
            .grain_target(Duration::from_nanos(1))
            .build()
            .unwrap();
        let cache: LocalCache<u64, u64> = LocalCache::new(100);
        let loads = AtomicUsize::new(0);
        let run = |key: u64| {
            let items: Vec<u64> = (0..N as u64).collect();
            processor.map(&items, |_| {
                cache.get_or_load(key, || {
                    loads.fetch_add(1, Ordering::SeqCst);
                    // The "driver call".
                    let r = processor.blocking().map(vec![key], |k| k * 10);
                    Ok::<_, std::io::Error>(*r[0].as_ref().unwrap())
                })
            })
        };
        // Warm-up: the closure's cost is learned, so the next batch splits
        // into one rayon job per item at once (no timed prefix on the caller).
        assert!(run(0).iter().all(|r| matches!(r, Ok(Ok(0)))));
        let parallel_before = processor.stats().parallel_runs;
        let out = run(1);
        assert!(
            processor.stats().parallel_runs > parallel_before,
            "{cpu_threads} rayon threads: the batch did not go to rayon"
        );
        let failed: Vec<String> = out
            .iter()
            .filter_map(|r| match r {
                Ok(Ok(10)) => None,
                Ok(Ok(v)) => Some(format!("wrong value {v}")),
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{cpu_threads} rayon threads: {} of {N} items failed, e.g. {:?}",
            failed.len(),
            failed[0]
        );
        assert_eq!(loads.load(Ordering::SeqCst), 2, "one load per key");
        assert_eq!(cache.get(&1), Some(10));
    }
}

/// A cache loader that runs an `Async` batch whose items read through the
/// same cache (a page of users, each user loaded once however many pages
/// ask for it), from many requests at once. On a current-thread runtime
/// the items are polled inside the loader (inline); on a multi-thread one
/// they are tasks. Either way: every page right, every user loaded once.
async fn pages_through_the_cache() {
    use torque_cache::LocalCache;

    let processor = Processor::builder().async_limit(4).build().unwrap();
    let cache: LocalCache<u64, Arc<Vec<u64>>> = LocalCache::new(1_000);
    let user_loads = Arc::new(AtomicUsize::new(0));
    let mut requests = Vec::new();
    for page in 0..8u64 {
        for _ in 0..3 {
            let (processor, cache, user_loads) =
                (processor.clone(), cache.clone(), Arc::clone(&user_loads));
            requests.push(tokio::spawn(async move {
                let key = 1_000 + page;
                let loader_cache = cache.clone();
                cache
                    .get_or_load_async(key, move || async move {
                        // Users page*2 .. page*2+4: neighbouring pages
                        // share users.
                        let ids: Vec<u64> = (page * 2..page * 2 + 4).collect();
                        let users = processor
                            .async_io()
                            .map(ids, move |id| {
                                let (cache, user_loads) =
                                    (loader_cache.clone(), Arc::clone(&user_loads));
                                async move {
                                    cache
                                        .get_or_load_async(id, || async move {
                                            user_loads.fetch_add(1, Ordering::SeqCst);
                                            tokio::task::yield_now().await;
                                            Ok::<_, std::io::Error>(Arc::new(vec![id]))
                                        })
                                        .await
                                }
                            })
                            .await;
                        let mut page_ids = Vec::new();
                        for user in users {
                            match user {
                                Ok(Ok(u)) => page_ids.extend(u.iter().copied()),
                                Ok(Err(e)) => return Err(format!("user load: {e}")),
                                Err(e) => return Err(format!("item: {e}")),
                            }
                        }
                        Ok(Arc::new(page_ids))
                    })
                    .await
                    .map(|p| (page, p))
            }));
        }
    }
    for r in requests {
        let (page, ids) = r.await.unwrap().unwrap();
        assert_eq!(*ids, (page * 2..page * 2 + 4).collect::<Vec<_>>());
    }
    // Users 0..=17, each loaded exactly once.
    assert_eq!(user_loads.load(Ordering::SeqCst), 18);
    assert_eq!(cache.stats().loads, 8 + 18);
    let io = processor.stats().io;
    assert!(adds_up(&io), "{io:?}");
    assert_eq!(io.succeeded, 8 * 4);
}

#[tokio::test(flavor = "current_thread")]
async fn a_cache_loader_runs_an_inline_batch_reading_through_the_cache() {
    pages_through_the_cache().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_loader_runs_a_batch_of_tasks_reading_through_the_cache() {
    pages_through_the_cache().await;
}

/// A write-behind `Batcher` shared by request tasks: each request sends
/// its row and awaits its receipt, some under a timeout that fires before
/// the write; a failing batch reaches exactly its items; dropping the
/// last handle flushes and stops the driver, with the counts adding up.
#[tokio::test(start_paused = true)]
async fn a_shared_batcher_under_request_timeouts() {
    use torque_parallel::batch::{Batcher, FlushError};

    let (batcher, driver) = Batcher::builder()
        .max_size(4)
        .max_linger(Duration::from_millis(5))
        .queue_capacity(8)
        .build(|rows: Vec<u64>| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if rows.contains(&13) {
                Err("constraint")
            } else {
                Ok(())
            }
        })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let mut requests = Vec::new();
    for row in 0..40u64 {
        let batcher = batcher.clone();
        requests.push(tokio::spawn(async move {
            let receipt = batcher.send(row).await.expect("driver running");
            if row % 5 == 0 {
                // The client gives up; the row is written all the same.
                tokio::time::timeout(Duration::from_millis(1), receipt)
                    .await
                    .ok()
            } else {
                Some(receipt.await)
            }
        }));
    }
    let mut failed = 0;
    for (row, r) in requests.into_iter().enumerate() {
        match r.await.unwrap() {
            Some(Ok(())) | None => {}
            Some(Err(FlushError::Sink(e))) => {
                assert_eq!(*e, "constraint");
                failed += 1;
            }
            Some(Err(e)) => panic!("row {row}: {e:?}"),
        }
    }
    assert!(failed >= 1, "row 13's batch failed");
    drop(batcher);
    let stats = driver.await.unwrap();
    assert_eq!(stats.items, 40);
    assert_eq!((stats.queued, stats.pending), (0, 0));
    assert!(stats.failed_batches >= 1 && stats.failed_items >= failed);
}

/// Hedged requests: the same query to three replicas, the first answer
/// wins and the stream is dropped. The losers are aborted and their
/// permits come back; on a multi-thread runtime, at the runtime's next
/// turns (the docs' "when the runtime next gets to them").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_request_keeps_the_first_answer_and_frees_the_rest() {
    use futures_util::StreamExt;

    let processor = Processor::builder().build().unwrap();
    let limiter = ConcurrencyLimiter::new(Fixed::new(8));
    for round in 0..20u64 {
        let (fast_tx, fast_rx) = tokio::sync::oneshot::channel::<u64>();
        let fast_rx = Arc::new(std::sync::Mutex::new(Some(fast_rx)));
        let mut answers = processor
            .async_io()
            .with_limiter(limiter.clone())
            .as_completed([0u64, 1, 2], move |replica| {
                let fast_rx = Arc::clone(&fast_rx);
                async move {
                    // Replica 1 answers; the others never do.
                    if replica == 1 {
                        let rx = fast_rx.lock().unwrap().take().unwrap();
                        Ok::<_, std::io::Error>(rx.await.unwrap())
                    } else {
                        std::future::pending().await
                    }
                }
            });
        fast_tx.send(round).unwrap();
        let (index, answer) = answers.next().await.unwrap();
        assert_eq!((index, answer.unwrap()), (1, round));
        drop(answers);
        // The losers' tasks are dropped by the workers, on other threads:
        // wait for their permits by taking all 8 (bounded, to fail
        // loudly on a leak).
        all_permits_back(&limiter, 8).await;
    }
    let io = processor.stats().io;
    assert_eq!((io.succeeded, io.cancelled, io.in_flight), (20, 40, 0));
    assert!(adds_up(&io), "{io:?}");
}
