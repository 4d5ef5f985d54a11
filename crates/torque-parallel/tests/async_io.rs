//! The `Async` strategy: order, completion order, errors and panics per
//! item, cancellation, bounded input, and what the limiter sees. Timing
//! runs on tokio's paused clock.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, sleep};
use torque_parallel::limit::{Algorithm, ConcurrencyLimiter, Fixed, Limiter, Outcome, Sample};
use torque_parallel::{CancelToken, ItemError, Processor, TokioClock};

const MS: Duration = Duration::from_millis(1);

/// Counts live item futures: one per guard, gone when the future is dropped.
#[derive(Clone, Default)]
struct Live(Arc<AtomicUsize>);

struct Guard(Arc<AtomicUsize>);

impl Live {
    fn guard(&self) -> Guard {
        self.0.fetch_add(1, SeqCst);
        Guard(Arc::clone(&self.0))
    }
    fn count(&self) -> usize {
        self.0.load(SeqCst)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Lets the runtime run until `cond` holds (no clock advance), failing
/// after a bounded number of turns rather than hanging.
async fn settle(mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn map_keeps_input_order_whatever_the_latencies() {
    let p = Processor::builder().async_limit(8).build().unwrap();
    let delays: Vec<u32> = (0..50).map(|i| (i * 37) % 11 + 1).collect();
    let out = p
        .async_io()
        .map(delays.clone(), |ms| async move {
            sleep(ms * MS).await;
            ms
        })
        .await;
    let got: Vec<u32> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(got, delays);
    let stats = p.stats().io;
    assert_eq!((stats.succeeded, stats.in_flight), (50, 0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn as_completed_yields_in_completion_order() {
    let p = Processor::builder().async_limit(4).build().unwrap();
    let done: Vec<usize> = p
        .async_io()
        .as_completed([40u32, 10, 30, 20], |ms| async move {
            sleep(ms * MS).await;
            Ok::<_, ()>(ms)
        })
        .map(|(i, r)| {
            assert!(r.is_ok());
            i
        })
        .collect()
        .await;
    assert_eq!(done, [1, 3, 2, 0]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_item_is_its_own_error_and_the_batch_goes_on() {
    let p = Processor::builder().async_limit(3).build().unwrap();
    let out = p
        .async_io()
        .map(0..20u32, |x| {
            // A panic while making the future, and one inside it.
            assert!(x != 5, "five");
            async move {
                sleep(MS).await;
                if x == 7 {
                    panic!("seven");
                }
                x
            }
        })
        .await;
    assert_eq!(out.len(), 20);
    assert!(matches!(&out[5], Err(ItemError::Panicked(e)) if e.message() == "five"));
    assert!(matches!(&out[7], Err(ItemError::Panicked(e)) if e.message() == "seven"));
    let ok = out.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 18);
    assert_eq!(p.stats().io.panicked, 2);
    assert_eq!(
        p.async_io().limiter().stats().in_flight,
        0,
        "permits returned"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn try_map_errors_and_timeouts_are_per_item() {
    let p = Processor::builder().async_limit(4).build().unwrap();
    let out = p
        .async_io()
        .timeout(50 * MS)
        .try_map(0..6u32, |x| async move {
            sleep(x * 20 * MS).await;
            if x == 1 { Err("one") } else { Ok(x) }
        })
        .await;
    assert_eq!(*out[0].as_ref().unwrap(), 0);
    assert!(matches!(out[1], Err(ItemError::Failed("one"))));
    assert_eq!(*out[2].as_ref().unwrap(), 2);
    for r in &out[3..] {
        assert!(matches!(r, Err(ItemError::TimedOut(d)) if *d == 50 * MS));
    }
    let s = p.stats().io;
    assert_eq!((s.succeeded, s.failed, s.timed_out), (2, 1, 3));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn stream_input_and_for_each() {
    let p = Processor::builder().async_limit(2).build().unwrap();
    let input = futures_util::stream::iter(0..10u32).then(|x| async move {
        sleep(MS).await;
        x
    });
    let out = p
        .async_io()
        .map_stream(input, |x| async move { x * 2 })
        .await;
    assert_eq!(out.len(), 10);
    assert_eq!(*out[9].as_ref().unwrap(), 18);

    let seen = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&seen);
    let summary = p
        .async_io()
        .for_each(0..10usize, move |x| {
            let s = Arc::clone(&s);
            async move {
                assert!(x != 3, "three");
                s.fetch_add(1, SeqCst);
            }
        })
        .await;
    assert_eq!(summary.panics.len(), 1);
    assert_eq!(seen.load(SeqCst), 9);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn cancel_token_stops_the_batch_within_100ms_and_leaks_no_task() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .async_limit(16)
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let live = Live::default();
    let l = live.clone();
    let t = token.clone();
    tokio::spawn(async move {
        sleep(30 * MS).await;
        t.cancel();
    });
    let start = Instant::now();
    let out = p
        .async_io()
        .map(0..1_000u32, move |x| {
            let guard = l.guard();
            async move {
                let _guard = guard;
                sleep(10 * 1_000 * MS).await;
                x
            }
        })
        .await;
    let took = start.elapsed();
    assert!(took <= 100 * MS, "took {took:?}");
    assert!(
        out.iter()
            .all(|r| r.as_ref().is_err_and(ItemError::is_cancelled))
    );
    assert!(out.len() <= 17, "{} items taken from the input", out.len());
    settle(|| live.count() == 0).await;
    assert_eq!(p.stats().io.in_flight, 0);
    assert_eq!(p.async_io().limiter().stats().in_flight, 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dropping_the_batch_aborts_its_tasks() {
    let p = Processor::builder().async_limit(8).build().unwrap();
    let live = Live::default();
    let l = live.clone();
    let batch = p.async_io().map(0..100u32, move |x| {
        let guard = l.guard();
        async move {
            let _guard = guard;
            sleep(1_000 * MS).await;
            x
        }
    });
    let start = Instant::now();
    assert!(tokio::time::timeout(20 * MS, batch).await.is_err());
    assert!(start.elapsed() < 100 * MS);
    settle(|| live.count() == 0).await;
    assert_eq!(p.stats().io.in_flight, 0);
    settle(|| p.async_io().limiter().stats().in_flight == 0).await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn never_takes_more_than_limit_plus_one_items_from_the_input() {
    const LIMIT: usize = 4;
    let p = Processor::builder().async_limit(LIMIT).build().unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let worst = Arc::new(Mutex::new((0usize, 0usize)));
    let counting = {
        let pulled = Arc::clone(&pulled);
        (0..200u32).inspect(move |_| {
            pulled.fetch_add(1, SeqCst);
        })
    };
    let (d, r, w, pl) = (
        Arc::clone(&done),
        Arc::clone(&running),
        Arc::clone(&worst),
        Arc::clone(&pulled),
    );
    let out = p
        .async_io()
        .map(counting, move |x| {
            let (d, r, w, pl) = (
                Arc::clone(&d),
                Arc::clone(&r),
                Arc::clone(&w),
                Arc::clone(&pl),
            );
            async move {
                let now_running = r.fetch_add(1, SeqCst) + 1;
                {
                    let mut w = w.lock().unwrap();
                    let ahead = pl.load(SeqCst) - d.load(SeqCst);
                    *w = (w.0.max(ahead), w.1.max(now_running));
                }
                sleep((x % 7 + 1) * MS).await;
                r.fetch_sub(1, SeqCst);
                d.fetch_add(1, SeqCst);
            }
        })
        .await;
    assert_eq!(out.len(), 200);
    let (ahead, running) = *worst.lock().unwrap();
    assert!(running <= LIMIT, "{running} running at once");
    assert!(ahead <= LIMIT + 1, "{ahead} items taken and not done");
}

/// Records every sample the limiter feeds its algorithm.
#[derive(Debug, Clone, Default)]
struct Spy(Arc<Mutex<Vec<Sample>>>);

impl Algorithm for Spy {
    fn initial_limit(&self) -> usize {
        2
    }
    fn update(&mut self, sample: &Sample) -> usize {
        self.0.lock().unwrap().push(*sample);
        2
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_limiter_sees_each_items_latency_and_outcome() {
    let spy = Spy::default();
    let limiter = ConcurrencyLimiter::with_clock(spy.clone(), TokioClock);
    let p = Processor::builder().build().unwrap();
    let out = p
        .async_io()
        .with_limiter(limiter.clone())
        .timeout(100 * MS)
        .try_map([20u32, 30, 500, 0], |ms| async move {
            sleep(ms * MS).await;
            if ms == 0 { Err("refused") } else { Ok(ms) }
        })
        .await;
    assert_eq!(out.len(), 4);
    let mut samples = spy.0.lock().unwrap().clone();
    samples.sort_by_key(|s| s.latency);
    let seen: Vec<(Duration, Outcome)> = samples.iter().map(|s| (s.latency, s.outcome)).collect();
    // The error is ignored (no sample), the timeout is an overload.
    assert_eq!(
        seen,
        [
            (20 * MS, Outcome::Success),
            (30 * MS, Outcome::Success),
            (100 * MS, Outcome::Overload),
        ]
    );
    assert!(samples.iter().all(|s| s.in_flight <= 2));
    assert_eq!(limiter.stats().in_flight, 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn stats_report_latency_percentiles_and_throughput() {
    let p = Processor::builder().async_limit(10).build().unwrap();
    p.async_io()
        .map(0..100u32, |_| async { sleep(8 * MS).await })
        .await;
    let s = p.stats().io;
    assert_eq!(
        (s.started, s.succeeded, s.in_flight, s.limit),
        (100, 100, 0, 10)
    );
    // Power-of-two buckets: 8 ms is reported as at most 16 ms.
    let p50 = s.latency_p50.unwrap();
    assert!(p50 >= 8 * MS && p50 <= 16 * MS, "{p50:?}");
    assert_eq!(s.busy, 80 * MS);
    assert_eq!(s.throughput().round() as u32, 1_250);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_default_adaptive_limit_runs_a_batch() {
    let p = Processor::builder().build().unwrap();
    let out = p
        .async_io()
        .map(0..500u32, |x| async move {
            sleep(5 * MS).await;
            x
        })
        .await;
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, r)| *r.as_ref().unwrap() == i as u32)
    );
    assert!(p.stats().io.limit >= 1);
}

#[test]
fn builder_refuses_a_zero_limit_or_timeout() {
    assert!(Processor::builder().async_limit(0).build().is_err());
    assert!(Processor::builder().hybrid_buffer(0).build().is_err());
    assert!(
        Processor::builder()
            .item_timeout(Duration::ZERO)
            .build()
            .is_err()
    );
    let _fixed = Fixed::new(1);
}

/// Regression: a task aborted before its first poll still left in-flight.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn in_flight_returns_to_zero_when_tasks_are_aborted_unpolled() {
    let p = Processor::builder().async_limit(8).build().unwrap();
    let mut batch = Box::pin(p.async_io().map(0..8u32, |x| async move {
        sleep(1_000 * MS).await;
        x
    }));
    // One poll spawns the tasks; dropping the batch before the runtime ever
    // polls them aborts them unpolled.
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(batch.as_mut().poll(&mut cx).is_pending());
    assert_eq!(p.stats().io.in_flight, 8);
    drop(batch);
    settle(|| p.stats().io.in_flight == 0).await;
}

/// The batch futures are `Send`: they can be spawned, and on a multi-thread
/// runtime the items run on several workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_can_be_spawned_on_a_multi_thread_runtime() {
    let p = Processor::builder().build().unwrap();
    let batch = p.async_io().map(0..2_000u64, |x| async move {
        tokio::task::yield_now().await;
        x * 3
    });
    let out = tokio::spawn(batch).await.unwrap();
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, r)| *r.as_ref().unwrap() == i as u64 * 3)
    );

    let hybrid = p.hybrid().map(
        (0..500u64).collect::<Vec<_>>(),
        |x| x + 1,
        |y| async move { y * 2 },
    );
    let out = tokio::spawn(hybrid).await.unwrap();
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, r)| *r.as_ref().unwrap() == (i as u64 + 1) * 2)
    );
    let s = p.stats().io;
    assert_eq!((s.succeeded, s.in_flight, s.queued), (2_500, 0, 0));
}

/// Tasks alive on the current runtime, seen from inside an item.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// On a current-thread runtime there is no parallelism for a task per item
/// to buy, so `map` and `for_each` poll the items inside the batch's own
/// future (no spawn); `as_completed`, whose consumer may leave the stream
/// unpolled, still runs a task per item so that its items go on meanwhile.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn on_a_current_thread_runtime_map_polls_items_inline_and_as_completed_spawns() {
    let p = Processor::builder().async_limit(8).build().unwrap();
    let most = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&most);
    let out = p
        .async_io()
        .map(0..50u32, move |x| {
            let m = Arc::clone(&m);
            async move {
                sleep(MS).await;
                m.fetch_max(alive_tasks(), SeqCst);
                x
            }
        })
        .await;
    assert_eq!(out.len(), 50);
    assert_eq!(most.load(SeqCst), 0, "no task per item");

    let m = Arc::clone(&most);
    let done = p
        .async_io()
        .as_completed(0..50u32, move |x| {
            let m = Arc::clone(&m);
            async move {
                sleep(MS).await;
                m.fetch_max(alive_tasks(), SeqCst);
                Ok::<_, std::convert::Infallible>(x)
            }
        })
        .count()
        .await;
    assert_eq!(done, 50);
    assert!(most.load(SeqCst) >= 1, "a task per item");
}

/// On a multi-thread runtime `map` keeps a task per item, so the items run
/// on several workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_multi_thread_runtime_map_runs_a_task_per_item() {
    let p = Processor::builder().async_limit(8).build().unwrap();
    let least = Arc::new(AtomicUsize::new(usize::MAX));
    let l = Arc::clone(&least);
    let out = p
        .async_io()
        .map(0..50u32, move |x| {
            let l = Arc::clone(&l);
            async move {
                tokio::task::yield_now().await;
                l.fetch_min(alive_tasks(), SeqCst);
                x
            }
        })
        .await;
    assert_eq!(out.len(), 50);
    assert!(least.load(SeqCst) >= 1, "each item is a task");
}

/// Polled inline, a batch of futures that are ready at once must still
/// yield to the runtime now and then (tokio's cooperative budget), as a
/// task per item did: another task on a current-thread runtime gets to run
/// before the batch ends.
#[tokio::test(flavor = "current_thread")]
async fn an_inline_batch_of_ready_items_lets_other_tasks_run() {
    let p = Processor::builder().async_limit(64).build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    tokio::spawn(async move {
        r.store(1, SeqCst);
    });
    let seen = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&seen);
    let r = Arc::clone(&ran);
    let out = p
        .async_io()
        .map(0..10_000u32, move |x| {
            s.fetch_max(r.load(SeqCst), SeqCst);
            async move { x }
        })
        .await;
    assert_eq!(out.len(), 10_000);
    assert_eq!(seen.load(SeqCst), 1, "the other task ran during the batch");
}

/// Every item a batch took from its input (`taken`, started or not) is
/// accounted for in `stats().io` once it is no longer in flight: ended
/// (value, error, timeout), panicked or cancelled.
#[track_caller]
fn assert_every_item_taken_is_accounted_for(p: &Processor, taken: u64) {
    let s = p.stats().io;
    assert_eq!(s.in_flight, 0, "{s:?}");
    assert_eq!(s.taken, taken, "{s:?}");
    assert_eq!(taken, s.completed() + s.panicked + s.cancelled, "{s:?}");
}

/// Items 1 and 2 panic and fail at 5 ms; item `x` of the others takes
/// `10 × (x + 1)` ms. At a limit of 4, items 3–6 are running at 35 ms.
async fn items(x: u32) -> Result<u32, ()> {
    if x == 1 || x == 2 {
        sleep(5 * MS).await;
        assert!(x != 1, "item 1");
        return Err(());
    }
    sleep(10 * MS * (x + 1)).await;
    Ok(x)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_items_running_when_an_inline_batch_is_dropped_count_as_cancelled() {
    let p = Processor::builder().async_limit(4).build().unwrap();
    let batch = p.async_io().try_map(0..10u32, items);
    assert!(tokio::time::timeout(35 * MS, batch).await.is_err());
    let s = p.stats().io;
    assert_eq!(
        (s.started, s.succeeded, s.failed, s.panicked),
        (7, 1, 1, 1),
        "{s:?}"
    );
    // Before the fix the four items dropped with the batch were counted
    // nowhere (cancelled 0); the fifth, item 7 waiting for a permit, until
    // the stats were made to add up.
    assert_eq!(s.cancelled, 5, "{s:?}");
    assert_every_item_taken_is_accounted_for(&p, 8);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_items_running_when_a_task_batch_is_dropped_count_as_cancelled() {
    let p = Processor::builder().async_limit(4).build().unwrap();
    let mut stream = Box::pin(p.async_io().as_completed(0..10u32, items));
    let mut seen = 0;
    let _ = tokio::time::timeout(35 * MS, async {
        while stream.next().await.is_some() {
            seen += 1;
        }
    })
    .await;
    assert_eq!(seen, 3);
    drop(stream); // aborts the running tasks
    settle(|| p.stats().io.in_flight == 0).await;
    let s = p.stats().io;
    assert_eq!(
        (s.started, s.succeeded, s.failed, s.panicked),
        (7, 1, 1, 1),
        "{s:?}"
    );
    // Items 3–6 running, item 7 waiting for a permit.
    assert_eq!(s.cancelled, 5, "{s:?}");
    assert_every_item_taken_is_accounted_for(&p, 8);
}

/// The batch is dropped while a panic of the caller's unwinds (a task
/// that awaits it and then panics, a `join!` branch that panics): its
/// running items are cancelled all the same. They were counted nowhere,
/// for `InFlight` took any panic under way for the item's own.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_items_running_when_a_panic_drops_their_batch_count_as_cancelled() {
    let p = Processor::builder().async_limit(4).build().unwrap();
    let io = p.async_io();
    let task = tokio::spawn(async move {
        let batch = io.try_map(0..10u32, items);
        tokio::pin!(batch);
        assert!(tokio::time::timeout(35 * MS, &mut batch).await.is_err());
        panic!("the caller's own bug, with the batch still alive");
    });
    assert!(task.await.unwrap_err().is_panic());
    let s = p.stats().io;
    assert_eq!(
        (s.started, s.succeeded, s.failed, s.panicked),
        (7, 1, 1, 1),
        "{s:?}"
    );
    // Items 3–6 running, item 7 waiting for a permit.
    assert_eq!(s.cancelled, 5, "{s:?}");
    assert_every_item_taken_is_accounted_for(&p, 8);
}

/// Cancelling with the token counts each cancelled item once, as many as
/// come back `Cancelled`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn items_stopped_by_the_cancel_token_count_once() {
    for inline in [true, false] {
        let token = CancelToken::new();
        let p = Processor::builder().async_limit(4).build().unwrap();
        let handle = p.with_cancel(token.clone());
        let cancel = {
            let token = token.clone();
            tokio::spawn(async move {
                sleep(35 * MS).await;
                token.cancel();
            })
        };
        let io = handle.async_io();
        let out: Vec<Result<u32, ItemError<()>>> = if inline {
            io.try_map(0..10u32, items).await
        } else {
            let mut done: Vec<_> = io.as_completed(0..10u32, items).collect().await;
            done.sort_by_key(|(i, _)| *i);
            done.into_iter().map(|(_, r)| r).collect()
        };
        cancel.await.unwrap();
        let cancelled = out
            .iter()
            .filter(|r| r.as_ref().is_err_and(ItemError::is_cancelled))
            .count();
        // Items 3–6 running, item 7 waiting for a permit.
        assert_eq!((out.len(), cancelled), (8, 5), "inline {inline}");
        let s = p.stats().io;
        // Item 7 was cancelled before it started.
        assert_eq!(
            (s.taken, s.started, s.cancelled),
            (8, 7, 5),
            "inline {inline}: {s:?}"
        );
        assert_eq!(s.in_flight, 0, "inline {inline}: {s:?}");
    }
}

/// A `Limiter` of the user's that is not `Clone` (say it owns a metrics
/// handle).
struct Owned(ConcurrencyLimiter<Fixed>);

impl Limiter for Owned {
    fn try_acquire(
        &self,
    ) -> Result<torque_parallel::limit::Token, torque_parallel::limit::Rejected> {
        self.0.try_acquire()
    }
    fn acquire(&self) -> impl Future<Output = torque_parallel::limit::Token> + Send + '_ {
        self.0.acquire()
    }
    fn stats(&self) -> torque_parallel::limit::Stats {
        self.0.stats()
    }
}

/// `AsyncIo` holds its limiter in an `Arc`, and its methods consume the
/// handle, so running two batches under one limiter means cloning the
/// handle; derive(Clone) asked the limiter itself to be `Clone`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_an_async_io_under_a_limiter_that_is_not_clone_is_clone() {
    let p = Processor::builder().build().unwrap();
    let io = p
        .async_io()
        .with_limiter(Owned(ConcurrencyLimiter::new(Fixed::new(2))));
    let again = io.clone();
    let (a, b) = tokio::join!(
        io.map(0..4u32, |x| async move {
            sleep(10 * MS).await;
            x
        }),
        again.map(0..4u32, |x| async move {
            sleep(10 * MS).await;
            x
        }),
    );
    assert_eq!((a.len(), b.len()), (4, 4));
    let hybrid = p
        .hybrid()
        .with_limiter(Owned(ConcurrencyLimiter::new(Fixed::new(2))));
    let out = hybrid
        .clone()
        .map(0..3u32, |x| x + 1, |x| async move { x })
        .await;
    assert_eq!(out.len(), 3);
}

/// A panic payload whose own `Drop` panics (`panic_any` of such a type).
struct PayloadBomb;

impl Drop for PayloadBomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("the payload's drop");
        }
    }
}

/// Regression: the `Async` strategy dropped a caught panic's payload
/// outside any `catch_unwind` (66258d5 fixed it on the `Cpu` paths only),
/// so a payload whose `Drop` panics escaped the batch, its other items'
/// results lost with it: a panic while making an item's future, or inside
/// it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_a_panic_payload_whose_drop_panics_stays_the_items_error() {
    let p = Processor::builder().async_limit(3).build().unwrap();
    let batch = p.async_io().map(0..6u32, |x| {
        if x == 1 {
            std::panic::panic_any(PayloadBomb);
        }
        async move {
            sleep(MS).await;
            if x == 4 {
                std::panic::panic_any(PayloadBomb);
            }
            x
        }
    });
    let out = tokio::spawn(batch)
        .await
        .expect("the payload's drop panic escaped the batch");
    assert!(out[1].as_ref().is_err_and(ItemError::is_panic));
    assert!(out[4].as_ref().is_err_and(ItemError::is_panic));
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 4);
}

/// The cancel token woke the batch, but a batch only acts when polled: an
/// `as_completed` stream the consumer held (after taking its first result)
/// ran its four other items on for as long as it was not polled again,
/// though a cancelled async batch aborts its running items at once.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_a_held_as_completed_stream_aborts_its_items_on_cancel() {
    let token = CancelToken::new();
    let p = Processor::builder().async_limit(5).build().unwrap();
    let live = Live::default();
    let io = p.with_cancel(token.clone()).async_io();
    let items = io.as_completed(0..5u64, |x| {
        let guard = live.guard();
        async move {
            let _guard = guard;
            sleep(if x == 0 { MS } else { 10 * MS * 1000 }).await;
            Ok::<_, ()>(x)
        }
    });
    let mut items = std::pin::pin!(items);
    assert_eq!(items.next().await.unwrap().0, 0);
    assert_eq!(live.count(), 4);
    token.cancel();
    // The stream is not polled: the cancel alone must stop the items.
    settle(|| live.count() == 0).await;
    assert_eq!(p.stats().io.in_flight, 0);
    let rest: Vec<_> = items.collect().await;
    assert_eq!(rest.len(), 4);
    assert!(
        rest.iter()
            .all(|(_, r)| r.as_ref().is_err_and(ItemError::is_cancelled))
    );
    assert_every_item_taken_is_accounted_for(&p, 5);
}

/// The input iterator is the caller's code run item by item, like the
/// closure, but its panic in `next()` unwound out of the batch: every
/// result was lost, those of the items that had run included. It is now
/// the error of the item it was making, and the input ends there (an
/// iterator that panicked is not resumed).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_a_panicking_input_iterator_is_the_error_of_the_item_it_was_making() {
    let input = || (0..10u32).inspect(|&x| assert!(x != 3, "input bug"));
    let item = |x: u32| async move {
        sleep(MS).await;
        Ok::<_, ()>(x)
    };
    for inline in [true, false] {
        let p = Processor::builder().async_limit(2).build().unwrap();
        let io = p.async_io();
        let out: Vec<Result<u32, ItemError<()>>> = if inline {
            io.try_map(input(), item).await
        } else {
            let mut done: Vec<_> = io.as_completed(input(), item).collect().await;
            done.sort_by_key(|(i, _)| *i);
            done.into_iter().map(|(_, r)| r).collect()
        };
        assert_eq!(out.len(), 4, "inline {inline}");
        for (i, r) in out[..3].iter().enumerate() {
            assert_eq!(*r.as_ref().unwrap(), i as u32, "inline {inline}");
        }
        assert!(
            matches!(&out[3], Err(ItemError::Panicked(e)) if e.message() == "input bug"),
            "inline {inline}: {:?}",
            out[3]
        );
        let s = p.stats().io;
        assert_eq!((s.panicked, s.in_flight), (1, 0), "inline {inline}");
    }
    let p = Processor::builder().build().unwrap();
    let summary = p.async_io().for_each(input(), |_| async {}).await;
    assert_eq!(summary.panics.len(), 1);
}

/// An outer batch of `outer` items under `p`'s limiter, each awaiting an
/// `Async` and a `Hybrid` batch of 4 items under the same limiter; the
/// sum of every inner result, or `None` if it has not ended within 60 s.
async fn nested_batches(p: &Processor, outer: u64) -> Option<u64> {
    let inner = p.clone();
    let batch = p.async_io().map(0..outer, move |x| {
        let p = inner.clone();
        async move {
            let io = p
                .async_io()
                .map(0..4u64, move |y| async move {
                    tokio::task::yield_now().await;
                    x + y
                })
                .await;
            let hybrid = p
                .hybrid()
                .map(0..4u64, move |y| x * y, |v| async move { v })
                .await;
            io.into_iter()
                .chain(hybrid)
                .map(Result::unwrap)
                .sum::<u64>()
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(60), batch)
        .await
        .ok()?;
    Some(out.into_iter().map(Result::unwrap).sum())
}

fn nested_sum(outer: u64) -> u64 {
    (0..outer).map(|x| 4 * x + 6 + 6 * x).sum()
}

/// A batch awaited inside an item of another batch under the same limiter
/// (the processor's, shared by all its async batches) waited for a permit
/// while the items at the limit, each waiting for such a batch, held them
/// all: with the default limit (4 at first), an outer batch of 16 items
/// never ended. The item's permit now serves its nested batch, one item at
/// a time while no permit of its own comes. (Not on the paused clock: it
/// would run the 60 s out while the `Hybrid` stage is on rayon.)
#[tokio::test(flavor = "current_thread")]
async fn regression_a_batch_nested_in_an_item_under_the_same_limiter_does_not_deadlock() {
    for p in [
        Processor::builder().build().unwrap(),
        Processor::builder().async_limit(1).build().unwrap(),
    ] {
        assert_eq!(nested_batches(&p, 16).await, Some(nested_sum(16)));
        let io = p.stats().io;
        assert_eq!((io.in_flight, io.queued, io.awaiting_permit), (0, 0, 0));
        assert_eq!(io.taken, io.succeeded, "{io:?}");
    }
}

/// The same on a multi-thread runtime, where the items are tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_batch_nested_in_a_task_item_under_the_same_limiter_does_not_deadlock() {
    let p = Processor::builder().async_limit(2).build().unwrap();
    assert_eq!(nested_batches(&p, 16).await, Some(nested_sum(16)));
}

/// A batch nested in an item under another limiter gets no permit of the
/// item's: it waits for its own limiter.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_batch_nested_under_another_limiter_waits_for_that_limiter() {
    let p = Processor::builder().async_limit(1).build().unwrap();
    let other = ConcurrencyLimiter::new(Fixed::new(1));
    let held = other.try_acquire().unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let (p2, other2, started2) = (p.clone(), other.clone(), Arc::clone(&started));
    let outer = tokio::spawn(p.async_io().map([()], move |()| {
        let (p, other, started) = (p2.clone(), other2.clone(), Arc::clone(&started2));
        async move {
            p.async_io()
                .with_limiter(other)
                .map(0..3, move |_| {
                    started.fetch_add(1, SeqCst);
                    async {}
                })
                .await
                .len()
        }
    }));
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        started.load(SeqCst),
        0,
        "no item ran past the other limiter"
    );
    drop(held);
    let out = outer.await.unwrap();
    assert_eq!(*out[0].as_ref().unwrap(), 3);
}

/// Nested batches under clones of one limiter given to `with_limiter` are
/// nested under the same limit too.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_nested_under_a_clone_of_the_items_limiter_does_not_deadlock() {
    let p = Processor::builder().build().unwrap();
    let limiter = ConcurrencyLimiter::new(Fixed::new(2));
    let (inner, l) = (p.clone(), limiter.clone());
    let batch = p
        .async_io()
        .with_limiter(limiter.clone())
        .map(0..8u64, move |x| {
            let (p, l) = (inner.clone(), l.clone());
            async move {
                let out = p
                    .async_io()
                    .with_limiter(l)
                    .map(0..4u64, move |y| async move { x + y })
                    .await;
                out.into_iter().map(Result::unwrap).sum::<u64>()
            }
        });
    let out = tokio::time::timeout(Duration::from_secs(60), batch)
        .await
        .expect("nested batches under one limiter ended");
    let sum: u64 = out.into_iter().map(Result::unwrap).sum();
    assert_eq!(sum, (0..8u64).map(|x| 4 * x + 6).sum::<u64>());
    assert_eq!(limiter.stats().in_flight, 0);
}

/// Two batches awaited together (`join!`) inside one item, both under the
/// item's limiter, each took the item's permit for one of its items: with
/// `async_limit(1)` two nested items ran at once. An item's permit serves
/// one nested item at a time, whichever batch it belongs to; the batch that
/// waits for it is woken when it comes back, also when polled only on its
/// own wake-ups (`FuturesUnordered`).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_two_batches_joined_in_an_item_share_its_permit_one_item_at_a_time() {
    for unordered in [false, true] {
        let p = Processor::builder().async_limit(1).build().unwrap();
        let (live, most) = (Live::default(), Arc::new(AtomicUsize::new(0)));
        let (inner, l, m) = (p.clone(), live.clone(), Arc::clone(&most));
        let outer = p.async_io().map([()], move |()| {
            let (p, live, most) = (inner.clone(), l.clone(), Arc::clone(&m));
            async move {
                let nested = |p: &Processor| {
                    let (live, most) = (live.clone(), Arc::clone(&most));
                    p.clone().async_io().map(0..3, move |_| {
                        let (live, most) = (live.clone(), Arc::clone(&most));
                        async move {
                            let _running = live.guard();
                            most.fetch_max(live.count(), SeqCst);
                            for _ in 0..3 {
                                tokio::task::yield_now().await;
                            }
                        }
                    })
                };
                if unordered {
                    let batches: futures_util::stream::FuturesUnordered<_> =
                        [nested(&p), nested(&p)].into_iter().collect();
                    batches
                        .map(|out| out.len())
                        .collect::<Vec<_>>()
                        .await
                        .iter()
                        .sum()
                } else {
                    let (a, b) = tokio::join!(nested(&p), nested(&p));
                    a.len() + b.len()
                }
            }
        });
        let out = tokio::time::timeout(Duration::from_secs(60), outer)
            .await
            .expect("nested batches ended");
        assert_eq!(*out[0].as_ref().unwrap(), 6);
        assert_eq!(
            most.load(SeqCst),
            1,
            "items running at once under a limit of 1"
        );
    }
}
