//! Defects found by the fourth review (batching, balancing, the memory
//! budget and the `Blocking` strategy), each pinned by a test named for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use parking_lot::Mutex;

mod common;
use common::hold_the_only_worker;
use torque_parallel::Processor;
use torque_parallel::batch::BatchSizer;

/// A dropped `map_async` future left its queued items in the pool's queue
/// until a worker popped them: behind another batch's long job they stayed
/// alive (the caller's data, the closure) and kept their weight in flight,
/// holding back every other batch's admission, though the docs promise
/// that nothing of a dropped batch stays alive once its running items end
/// (here none runs). A cancel token already took them out at once.
#[test]
fn regression_a_dropped_map_async_frees_its_queued_items_at_once() {
    let processor = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(4)
        .memory_budget(100)
        .build()
        .unwrap();
    let (release, holder) = hold_the_only_worker(&processor);
    let marker = Arc::new(());
    let items: Vec<Arc<()>> = (0..3).map(|_| Arc::clone(&marker)).collect();
    let mut fut = processor.blocking().map_weighted_async(
        items,
        |_| 10,
        |x: Arc<()>| Ok::<usize, ()>(Arc::strong_count(&x)),
    );
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
    let before = processor.stats();
    drop(fut);
    let after = processor.stats();
    let held = Arc::strong_count(&marker) - 1;
    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(
        (before.blocking_queued, before.blocking_in_flight_weight),
        (3, 31)
    );
    assert_eq!(
        (after.blocking_queued, after.blocking_in_flight_weight, held),
        (0, 1, 0),
        "the dropped batch's queued items are gone while the other job runs"
    );
}

/// With `initial_size` at `min_size` and its double above `max_size` (say
/// sizes 16..=20), the sizer "alternated" 16 and `max(16 / 2, 16)` = 16:
/// one size only, so it never drew a line and stayed at 16 for good,
/// whatever the sink.
#[test]
fn regression_a_sizer_whose_double_and_half_are_out_of_bounds_still_learns() {
    let mut sizer = BatchSizer::builder()
        .min_size(16)
        .max_size(20)
        .latency_target(Duration::from_millis(10))
        .build()
        .unwrap();
    // 100 µs + 10 µs per item: 990 items fit in 10 ms, so the maximum.
    for _ in 0..50 {
        let n = sizer.next_size();
        sizer.observe(n, Duration::from_micros(100 + 10 * n as u64));
    }
    assert!(sizer.model().is_some(), "no cost model after 50 batches");
    assert_eq!(sizer.size(), 20);
}

/// `Processor::map_weighted` summed a wave's weights with saturation: with
/// a budget of `u64::MAX`, items of `u64::MAX` each all fitted in one wave
/// (the sum stuck at `u64::MAX`), so the weight in flight went past the
/// budget — the `Blocking` pool refuses such sums (checked, not
/// saturating).
#[test]
fn regression_map_weighted_waves_do_not_saturate_past_the_budget() {
    let processor = Processor::builder()
        .memory_budget(u64::MAX)
        .build()
        .unwrap();
    let log = Mutex::new(Vec::new());
    let weights = [u64::MAX, u64::MAX, 0];
    let out = processor.map_weighted(
        &[0usize, 1, 2],
        |&i| {
            log.lock().push(format!("weigh {i}"));
            weights[i]
        },
        |&i| {
            log.lock().push(format!("run {i}"));
            i
        },
    );
    assert!(out.iter().all(Result::is_ok));
    let log = log.into_inner();
    let at = |e: &str| log.iter().position(|x| x == e).unwrap();
    // Item 1 does not fit beside item 0: it starts the next wave, so item
    // 2 is weighed only after item 0's wave ran.
    assert!(at("run 0") < at("weigh 2"), "{log:?}");
}

/// Two `map_async` batches with one cancel token, polled by one task (a
/// `join!`), register the same waker with the token. The token kept one
/// copy of equal wakers, so when the first batch finished and unregistered
/// its waker, the second was left unregistered while it believed itself
/// registered: a cancel woke nobody, and the second batch, waiting for room
/// behind another batch's long job, did not stop until that job ended.
#[tokio::test(flavor = "current_thread")]
async fn regression_a_cancel_wakes_a_batch_whose_task_waker_another_batch_unregistered() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use torque_parallel::CancelToken;

    let processor = Processor::builder()
        .blocking_threads(2)
        .memory_budget(2)
        .build()
        .unwrap();
    // Weight 1 held on one worker until released.
    let (release, holder) = hold_the_only_worker(&processor);
    let token = CancelToken::new();
    let cancellable = processor.with_cancel(token.clone());
    let (a_started_tx, a_started) = std::sync::mpsc::channel::<()>();
    let (a_release, a_release_rx) = std::sync::mpsc::channel::<()>();
    let a_release_rx = Arc::new(std::sync::Mutex::new(a_release_rx));
    // Weight 1 on the other worker, until released.
    let mut a = cancellable.blocking().map_weighted_async(
        vec![()],
        |_| 1,
        move |()| {
            a_started_tx.send(()).unwrap();
            let _ = a_release_rx.lock().unwrap().recv();
            Ok::<(), ()>(())
        },
    );
    // Weight 2: waits for the holder's weight to drain.
    let mut b = cancellable
        .blocking()
        .map_weighted_async(vec![()], |_| 2, |()| Ok::<(), ()>(()));
    let a_done = Arc::new(AtomicBool::new(false));
    let a_flag = Arc::clone(&a_done);
    let mut a_out = None;
    let joined = tokio::spawn(std::future::poll_fn(move |cx| {
        if a_out.is_none()
            && let std::task::Poll::Ready(out) = Pin::new(&mut a).poll(cx)
        {
            a_out = Some(out);
            a_flag.store(true, Ordering::Release);
        }
        Pin::new(&mut b).poll(cx)
    }));
    tokio::task::yield_now().await;
    a_started.recv().unwrap();
    a_release.send(()).unwrap();
    common::wait_until_async(Duration::from_secs(60), || a_done.load(Ordering::Acquire)).await;
    token.cancel();
    let out = tokio::time::timeout(Duration::from_secs(60), joined).await;
    release.send(()).unwrap();
    holder.join().unwrap();
    let out = out.expect("the cancel stops the waiting batch").unwrap();
    assert!(
        out.iter()
            .all(|r| r.as_ref().is_err_and(|e| e.is_cancelled()))
    );
}

/// `CostModel::predict` multiplied `per_item` by `n` capped at `u32::MAX`,
/// so a batch of more than 4 295 million items was predicted to take as
/// long as one of `u32::MAX` items: twice the items, the same time.
#[cfg(target_pointer_width = "64")]
#[test]
fn regression_a_cost_model_predicts_batches_beyond_u32_items() {
    let mut sizer = BatchSizer::builder().build().unwrap();
    for _ in 0..50 {
        let n = sizer.next_size();
        sizer.observe(n, Duration::from_micros(100 + 10 * n as u64));
    }
    let model = sizer.model().expect("fitted");
    let n = u32::MAX as usize;
    let (one, two) = (model.predict(n), model.predict(2 * n));
    assert!(two > one + one / 2, "{one:?} then {two:?}");
    assert!(model.predict(usize::MAX) > two);
}
