//! Reproducers for defects found in review: each failed before its fix.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use torque_parallel::limit::{Algorithm, Sample};

mod common;
use common::{hold_the_only_worker, wait_until};

/// An algorithm with a fixed limit that records the latencies it is fed.
#[derive(Debug, Clone, Default)]
#[allow(dead_code)]
struct Recording(Arc<Mutex<Vec<Duration>>>);

impl Algorithm for Recording {
    fn initial_limit(&self) -> usize {
        4
    }

    fn update(&mut self, sample: &Sample) -> usize {
        self.0.lock().push(sample.latency);
        4
    }
}

/// The tower layer stamps the token when `poll_ready` succeeds, so a
/// service that is kept ready (as `Buffer` and `Balance` do) and called later
/// reports the idle wait as backend latency.
#[cfg(feature = "tower")]
#[test]
fn tower_latency_is_measured_from_call_not_from_poll_ready() {
    use std::future::{Future, Ready, ready};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use torque_parallel::limit::{ConcurrencyLimiter, LimitLayer, MockClock};
    use tower_layer::Layer;
    use tower_service::Service;

    struct Instant;
    impl Service<()> for Instant {
        type Response = ();
        type Error = ();
        type Future = Ready<Result<(), ()>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, (): ()) -> Self::Future {
            ready(Ok(()))
        }
    }

    let recorded = Recording::default();
    let clock = MockClock::new();
    let limiter = ConcurrencyLimiter::with_clock(recorded.clone(), clock.clone());
    let mut service = LimitLayer::new(limiter).layer(Instant);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    // Ready, then idle for a second before the request comes.
    clock.advance(Duration::from_secs(1));
    let response = pin!(service.call(()));
    assert!(matches!(response.poll(&mut cx), Poll::Ready(Ok(()))));
    assert_eq!(
        *recorded.0.lock(),
        [Duration::ZERO],
        "the backend answered at once"
    );
}

/// An async blocking batch waiting for room in the memory budget is not
/// woken by its cancel token: it returns only when the job that holds the
/// budget (another batch's) finishes, however long that takes.
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn blocking_map_async_waiting_for_room_stops_on_cancel() {
    use torque_parallel::{CancelToken, Processor};

    let processor = Processor::builder()
        .blocking_threads(1)
        .memory_budget(1)
        .build()
        .unwrap();
    // Another batch's job holds the whole budget until released.
    let (release_tx, holder) = hold_the_only_worker(&processor);

    let token = CancelToken::new();
    let batch = processor
        .with_cancel(token.clone())
        .blocking()
        .map_async(vec![1, 2, 3], |x| x);
    let batch = tokio::spawn(batch);
    tokio::task::yield_now().await; // the batch is now waiting for room
    token.cancel();
    let out = tokio::time::timeout(Duration::from_secs(60), batch).await;
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let out = out
        .expect("a cancelled batch returns without waiting for the other batch's job")
        .unwrap();
    assert!(
        out.iter()
            .all(|r| r.as_ref().is_err_and(|e| e.is_cancelled()))
    );
}

/// `hybrid_buffer` accepts any non-zero count, but a count above tokio's
/// channel limit panics when the pipeline is built.
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn a_huge_hybrid_buffer_does_not_panic() {
    let processor = torque_parallel::Processor::builder()
        .hybrid_buffer(usize::MAX)
        .build()
        .unwrap();
    let out = processor
        .hybrid()
        .map(vec![1u32, 2], |x| x * 2, |x| async move { x + 1 })
        .await;
    assert_eq!(*out[1].as_ref().unwrap(), 5);
}

/// `BatchSizer::window` has no documented upper bound, but a huge window
/// panics in `build` (it preallocates the whole window).
#[test]
fn a_huge_sizer_window_does_not_panic() {
    let built = std::panic::catch_unwind(|| {
        torque_parallel::batch::BatchSizer::builder()
            .window(usize::MAX)
            .build()
    });
    assert!(built.is_ok(), "build panicked instead of returning");
}

/// `blocking_threads` has no documented upper bound; a huge count overflows
/// the default queue capacity (`2 × threads`) in `build` and the pool's
/// handle vector on first use. It must be refused (or the batch come back
/// cancelled, as documented for threads that cannot start), not panic.
#[test]
fn a_huge_blocking_thread_count_does_not_panic() {
    let outcome = std::panic::catch_unwind(|| {
        match torque_parallel::Processor::builder()
            .blocking_threads(usize::MAX)
            .build()
        {
            Err(_) => true,
            Ok(p) => p
                .blocking()
                .map(vec![1u8], |x| x)
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.is_cancelled())),
        }
    });
    assert!(
        matches!(outcome, Ok(true)),
        "panicked or ran on threads that cannot exist"
    );
}

/// Weights whose sum overflows `u64` are admitted together (the sum
/// saturates to the budget, `u64::MAX` when none is set), then given back in
/// full: the in-flight weight underflows, the worker dies in `release` and
/// the batch never completes.
#[test]
fn weights_that_overflow_u64_do_not_kill_a_worker() {
    let processor = torque_parallel::Processor::builder()
        .blocking_threads(2)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let p = processor.clone();
    std::thread::spawn(move || {
        let out = p
            .blocking()
            .map_weighted(vec![1u8, 2, 3], |_| u64::MAX / 2 + 1, |x| x);
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the batch completes");
    assert!(out.iter().all(Result::is_ok));
    assert_eq!(processor.stats().blocking_in_flight_weight, 0);
}

/// A cancelled synchronous blocking batch whose items are queued behind
/// another batch's long job waits for that job: its own queued items are
/// only skipped once a worker pops them.
#[test]
fn blocking_map_cancelled_with_items_queued_behind_another_batch_returns() {
    use torque_parallel::{CancelToken, Processor};

    let processor = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(4)
        .build()
        .unwrap();
    let (release, holder) = hold_the_only_worker(&processor);
    let token = CancelToken::new();
    let cancellable = processor.with_cancel(token.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cancellable.blocking().map(vec![1, 2], |x| x));
    });
    wait_until(Duration::from_secs(60), || {
        processor.stats().blocking_queued == 2
    });
    token.cancel();
    let out = rx.recv_timeout(Duration::from_secs(60));
    release.send(()).unwrap();
    holder.join().unwrap();
    let out = out.expect("a cancelled batch returns without waiting for the other batch's job");
    assert!(
        out.iter()
            .all(|r| r.as_ref().is_err_and(|e| e.is_cancelled()))
    );
    assert_eq!(processor.stats().blocking_in_flight_weight, 0);
}

/// The async form of the above.
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn blocking_map_async_cancelled_with_items_queued_behind_another_batch_returns() {
    use torque_parallel::{CancelToken, Processor};

    let processor = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(4)
        .build()
        .unwrap();
    let (release, holder) = hold_the_only_worker(&processor);
    let token = CancelToken::new();
    let batch = processor
        .with_cancel(token.clone())
        .blocking()
        .map_async(vec![1, 2], |x| x);
    let batch = tokio::spawn(batch);
    tokio::task::yield_now().await; // both items are now queued
    assert_eq!(processor.stats().blocking_queued, 2);
    token.cancel();
    let out = tokio::time::timeout(Duration::from_secs(60), batch).await;
    release.send(()).unwrap();
    holder.join().unwrap();
    let out = out
        .expect("a cancelled batch returns without waiting for the other batch's job")
        .unwrap();
    assert!(
        out.iter()
            .all(|r| r.as_ref().is_err_and(|e| e.is_cancelled()))
    );
    assert_eq!(processor.stats().blocking_in_flight_weight, 0);
}

/// Dropping a `Hybrid` batch should skip the CPU work not yet started (as
/// documented); the items already handed to rayon ran anyway.
#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn dropping_a_hybrid_batch_skips_cpu_work_not_started() {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Waker};

    let processor = torque_parallel::Processor::builder()
        .cpu_threads(1)
        .hybrid_buffer(4)
        .build()
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let started_tx = std::sync::Mutex::new(started_tx);
    let release_rx = std::sync::Mutex::new(release_rx);
    let counted = Arc::clone(&ran);
    let batch = processor.hybrid().map(
        vec![0u32, 1, 2, 3],
        move |x| {
            counted.fetch_add(1, Ordering::SeqCst);
            if x == 0 {
                started_tx.lock().unwrap().send(()).unwrap();
                let _ = release_rx.lock().unwrap().recv();
            }
            x
        },
        |x| async move { x },
    );
    let mut batch = Box::pin(batch);
    // One poll hands the four items to the one rayon thread.
    assert!(
        batch
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    );
    started_rx.recv().unwrap();
    drop(batch);
    release_tx.send(()).unwrap();
    // rayon's queue is FIFO: this batch's CPU stage runs after the others.
    processor
        .hybrid()
        .map(vec![()], |()| (), |()| async {})
        .await;
    assert_eq!(ran.load(Ordering::SeqCst), 1, "only the running item ran");
}

/// rayon caps a thread count above its maximum silently, after spawning that
/// many threads; the builder refuses it instead, before any thread starts.
/// (Not run against the old code: it would have spawned 65,535 threads on a
/// shared machine.)
#[test]
fn a_cpu_thread_count_above_rayons_maximum_is_refused() {
    for n in [rayon::max_num_threads() + 1, usize::MAX] {
        let err = torque_parallel::Processor::builder()
            .cpu_threads(n)
            .build()
            .expect_err("refused");
        assert!(
            matches!(
                err,
                torque_parallel::BuildError::OutOfRange {
                    name: "cpu_threads",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
