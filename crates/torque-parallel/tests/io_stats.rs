//! `stats().io` adds up: every item an `Async` or `Hybrid` batch takes from
//! its input is counted once as completed, panicked or cancelled, or is
//! still on its way — whether it started or not, and however the batch
//! ended (cancelled, dropped, its input or an item panicking).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::sleep;
use torque_parallel::{CancelToken, ItemError, Processor};

const MS: Duration = Duration::from_millis(1);

/// An input that counts the items taken from it: each `next()` that
/// yields an item or panics (the item it was making).
struct Counted<I> {
    inner: I,
    taken: Arc<AtomicU64>,
}

fn counted<I: IntoIterator>(inner: I) -> (Counted<I::IntoIter>, Arc<AtomicU64>) {
    let taken = Arc::new(AtomicU64::new(0));
    let input = Counted {
        inner: inner.into_iter(),
        taken: Arc::clone(&taken),
    };
    (input, taken)
}

impl<I: Iterator> Iterator for Counted<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        self.taken.fetch_add(1, SeqCst);
        let next = self.inner.next();
        if next.is_none() {
            self.taken.fetch_sub(1, SeqCst);
        }
        next
    }
}

/// Once every batch of `p` has ended: `stats().io.taken` counts the
/// `taken` items, and each is counted once by its outcome.
#[track_caller]
fn assert_adds_up(p: &Processor, taken: &AtomicU64, what: &str) {
    let s = p.stats().io;
    let taken = taken.load(SeqCst);
    assert_eq!(
        (s.in_flight, s.queued, s.awaiting_permit),
        (0, 0, 0),
        "{what}: {s:?}"
    );
    assert_eq!(s.taken, taken, "{what}: {s:?}");
    assert!(s.started <= s.taken, "{what}: {s:?}");
    assert_eq!(
        taken,
        s.completed() + s.panicked + s.cancelled,
        "{what}: {taken} taken, {s:?}"
    );
}

/// While batches run: the items taken are counted by their outcome or
/// where they are.
#[track_caller]
fn assert_adds_up_live(p: &Processor, what: &str) {
    let s = p.stats().io;
    let on_their_way = (s.in_flight + s.queued + s.awaiting_permit) as u64;
    assert_eq!(
        s.taken,
        s.completed() + s.panicked + s.cancelled + on_their_way,
        "{what}: {s:?}"
    );
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

/// Items 1 and 2 panic and fail at 5 ms; item `x` of the others takes
/// `10 × (x + 1)` ms. At a limit of 4, items 3–6 are running from 10 ms on
/// and item 7 waits for a permit.
async fn items(x: u32) -> Result<u32, ()> {
    if x == 1 || x == 2 {
        sleep(5 * MS).await;
        assert!(x != 1, "item 1");
        return Err(());
    }
    sleep(10 * MS * (x + 1)).await;
    Ok(x)
}

/// The review's reproduction: a cancel catches items 3–6 running and item
/// 7 waiting for a permit; all five come back `Cancelled`, but only four
/// of them had started.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_cancel_counts_the_item_waiting_for_a_permit_once() {
    for inline in [true, false] {
        let token = CancelToken::new();
        let p = Processor::builder().async_limit(4).build().unwrap();
        let io = p.with_cancel(token.clone()).async_io();
        let cancel = tokio::spawn(async move {
            sleep(35 * MS).await;
            token.cancel();
        });
        let (input, taken) = counted(0..10u32);
        let batch = tokio::spawn(async move {
            let out: Vec<Result<u32, ItemError<()>>> = if inline {
                io.try_map(input, items).await
            } else {
                io.as_completed(input, items)
                    .map(|(_, r)| r)
                    .collect()
                    .await
            };
            out
        });
        sleep(20 * MS).await;
        let s = p.stats().io;
        assert_eq!(
            (s.taken, s.started, s.in_flight, s.awaiting_permit),
            (8, 7, 4, 1),
            "inline {inline}: items 3–6 running, 7 waiting: {s:?}"
        );
        assert_adds_up_live(&p, &format!("inline {inline}"));
        let out = batch.await.unwrap();
        cancel.await.unwrap();
        let cancelled = out
            .iter()
            .filter(|r| r.as_ref().is_err_and(ItemError::is_cancelled))
            .count();
        assert_eq!((out.len(), cancelled), (8, 5), "inline {inline}");
        assert_adds_up(&p, &taken, &format!("inline {inline}"));
    }
}

/// An item whose closure panics making its future never starts; one whose
/// future panics does.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn panicking_items_count_once_started_or_not() {
    let item = |x: u32| {
        assert!(x != 1, "making item 1");
        async move {
            sleep(MS).await;
            assert!(x != 4, "item 4");
            Ok::<_, ()>(x)
        }
    };
    for inline in [true, false] {
        let p = Processor::builder().async_limit(2).build().unwrap();
        let io = p.async_io();
        let (input, taken) = counted(0..8u32);
        let out: Vec<Result<u32, ItemError<()>>> = if inline {
            io.try_map(input, item).await
        } else {
            io.as_completed(input, item).map(|(_, r)| r).collect().await
        };
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 2);
        assert_eq!(p.stats().io.panicked, 2, "inline {inline}");
        assert_adds_up(&p, &taken, &format!("inline {inline}"));
    }
}

/// A panic of the input is the `Panicked` of the item it was making
/// (e4e15d3): an item taken, never started.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_input_counts_the_item_it_was_making() {
    let item = |x: u32| async move {
        sleep(MS).await;
        Ok::<_, ()>(x)
    };
    for inline in [true, false] {
        let p = Processor::builder().async_limit(2).build().unwrap();
        let io = p.async_io();
        let (input, taken) = counted((0..10u32).inspect(|&x| assert!(x != 3, "input bug")));
        let out: Vec<Result<u32, ItemError<()>>> = if inline {
            io.try_map(input, item).await
        } else {
            io.as_completed(input, item).map(|(_, r)| r).collect().await
        };
        assert_eq!(out.len(), 4, "inline {inline}");
        assert_adds_up(&p, &taken, &format!("inline {inline}"));
    }
}

/// Dropping an `as_completed` stream cancels its items, the one waiting
/// for a permit included; an item that panicked and was not yet handed
/// out still counts as panicked. Before the fix neither was counted.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_a_dropped_as_completed_stream_counts_every_item_it_took() {
    let p = Processor::builder().async_limit(4).build().unwrap();
    let (input, taken) = counted(0..10u32);
    let mut stream = Box::pin(p.async_io().as_completed(input, items));
    // Starts items 0–3 and takes item 4, which waits for a permit.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(stream.poll_next_unpin(cx)));
    assert!(first.await.is_pending());
    // Item 1 panics and item 2 fails in their tasks, unseen by the stream.
    sleep(6 * MS).await;
    assert_eq!(taken.load(SeqCst), 5);
    drop(stream);
    settle(|| p.stats().io.in_flight == 0).await;
    let s = p.stats().io;
    assert_eq!((s.failed, s.panicked, s.cancelled), (1, 1, 3), "{s:?}");
    assert_adds_up(&p, &taken, "dropped stream");
}

/// Either `Hybrid` stage may fail or panic; a CPU stage's error was counted
/// nowhere.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_hybrid_counts_the_errors_of_either_stage() {
    let p = Processor::builder()
        .cpu_threads(2)
        .async_limit(3)
        .build()
        .unwrap();
    let (input, taken) = counted(0..40u32);
    let out = p
        .hybrid()
        .try_map(
            input,
            |x| {
                assert!(x != 13, "cpu thirteen");
                if x == 20 { Err("cpu twenty") } else { Ok(x) }
            },
            |x| async move {
                sleep(MS).await;
                assert!(x != 30, "io thirty");
                if x == 31 { Err("io thirty-one") } else { Ok(x) }
            },
        )
        .await;
    assert_eq!(out.iter().filter(|r| r.is_err()).count(), 4);
    let s = p.stats().io;
    assert_eq!((s.failed, s.panicked), (2, 2), "{s:?}");
    assert_adds_up(&p, &taken, "hybrid");
}

/// Dropping a `Hybrid` batch cancels the items between its stages and the
/// one waiting for a permit; before the fix they were counted only when a
/// cancel token stopped the batch and its stream was read to the end.
#[tokio::test(flavor = "current_thread")]
async fn regression_a_dropped_hybrid_batch_counts_every_item_it_took() {
    const BUFFER: usize = 4;
    // One permit: item 0 runs, the others wait in the CPU stage or for
    // the permit; the CPU stage takes them all (see review3.rs).
    const N: u32 = BUFFER as u32 + 1;
    let p = Processor::builder()
        .cpu_threads(2)
        .hybrid_buffer(BUFFER)
        .async_limit(1)
        .build()
        .unwrap();
    let (cpu_done_tx, mut cpu_done) = tokio::sync::watch::channel(0u32);
    let (io_started_tx, mut io_started) = tokio::sync::watch::channel(0u32);
    let (input, taken) = counted(0..N);
    let batch = p.hybrid().map(
        input,
        move |x| {
            cpu_done_tx.send_modify(|n| *n += 1);
            x
        },
        move |x| {
            io_started_tx.send_modify(|n| *n += 1);
            async move {
                std::future::pending::<()>().await;
                x
            }
        },
    );
    let stopped = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            _ = batch => unreachable!("the I/O stage never ends"),
            _ = async {
                cpu_done.wait_for(|&n| n == N).await.unwrap();
                io_started.wait_for(|&n| n == 1).await.unwrap();
                // Item 0 running, the others between the stages or
                // waiting for the permit.
                assert_adds_up_live(&p, "hybrid batch at its limit");
            } => {}
        }
    })
    .await;
    stopped.expect("every CPU part runs, and item 0's I/O part starts");
    settle(|| p.stats().io.in_flight == 0).await;
    let s = p.stats().io;
    assert_eq!(s.started, 1, "{s:?}");
    assert_adds_up(&p, &taken, "dropped hybrid batch");
}

/// A panic of a `Hybrid` batch's input is the `Panicked` of the item it
/// was making, as for `Async` (e4e15d3); it unwound out of the batch.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_a_panicking_hybrid_input_is_the_error_of_the_item_it_was_making() {
    let p = Processor::builder()
        .cpu_threads(2)
        .async_limit(2)
        .build()
        .unwrap();
    let (input, taken) = counted((0..10u32).inspect(|&x| assert!(x != 3, "input bug")));
    let batch = p.hybrid().map(input, |x| x, |x| async move { x });
    let out = tokio::spawn(batch)
        .await
        .expect("the input's panic escaped the batch");
    assert_eq!(out.len(), 4);
    for (i, r) in out[..3].iter().enumerate() {
        assert_eq!(*r.as_ref().unwrap(), i as u32);
    }
    assert!(
        matches!(&out[3], Err(ItemError::Panicked(e)) if e.message() == "input bug"),
        "{:?}",
        out[3]
    );
    assert_adds_up(&p, &taken, "hybrid input panic");
}

/// `map` polled outside a tokio runtime panics, as documented; it used to
/// panic as its first item started (the runtime's flavour is read there),
/// with that item counted taken and in flight for good: the processor's
/// stats (and the process-wide gauges) never added up again. The flavour
/// is now read before an item is taken.
#[test]
fn regression_a_map_polled_outside_a_runtime_leaves_no_item_in_flight() {
    use futures_util::FutureExt;

    let p = Processor::builder().build().unwrap();
    let (input, taken) = counted(0..3u32);
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.async_io().map(input, items).now_or_never()
    }));
    assert!(polled.is_err(), "polled outside a runtime: a panic");
    assert_adds_up(&p, &taken, "map outside a runtime");
}

/// A limit algorithm that panics on every sample (a bug in user code).
#[derive(Debug)]
struct PanicsOnUpdate;

impl torque_parallel::limit::Algorithm for PanicsOnUpdate {
    fn initial_limit(&self) -> usize {
        2
    }
    fn update(&mut self, _: &torque_parallel::limit::Sample) -> usize {
        panic!("the algorithm's bug");
    }
}

/// An item whose future succeeded but whose limit algorithm panicked as
/// its permit went back comes back `Panicked`, and counts as panicked, not
/// as succeeded: the counts agree with the results. (The item leaves
/// in-flight before its permit goes back, so its count is settled before
/// the algorithm runs and corrected when it panics.)
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_item_whose_algorithm_panics_counts_as_panicked() {
    use torque_parallel::limit::ConcurrencyLimiter;
    for inline in [true, false] {
        let p = Processor::builder().build().unwrap();
        let io = p
            .async_io()
            .with_limiter(ConcurrencyLimiter::new(PanicsOnUpdate));
        let (input, taken) = counted(0..6u32);
        let item = |x: u32| async move {
            sleep(MS).await;
            Ok::<_, ()>(x)
        };
        let out: Vec<Result<u32, ItemError<()>>> = if inline {
            io.try_map(input, item).await
        } else {
            io.as_completed(input, item).map(|(_, r)| r).collect().await
        };
        assert_eq!(out.len(), 6, "inline {inline}");
        assert!(
            out.iter().all(|r| matches!(r, Err(ItemError::Panicked(_)))),
            "inline {inline}: {out:?}"
        );
        let s = p.stats().io;
        assert_eq!((s.panicked, s.succeeded), (6, 0), "inline {inline}: {s:?}");
        assert_adds_up(&p, &taken, &format!("inline {inline}"));
    }
}
