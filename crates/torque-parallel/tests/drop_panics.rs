//! A panicking `Drop` of user data on a pool thread (an item skipped after a
//! cancel, the last handle to the closure) is isolated like a panicking
//! item: the thread survives (a panic out of a rayon job would abort the
//! process), the job's weight is given back and the batch completes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use torque_parallel::{CancelToken, ItemError, Processor};

mod common;
use common::wait_until;

/// An item whose drop panics unless the closure defuses it.
struct Bomb(u32);

impl Bomb {
    fn defuse(self) -> u32 {
        let n = self.0;
        std::mem::forget(self);
        n
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("bomb {} dropped", self.0);
    }
}

#[test]
fn a_skipped_item_whose_drop_panics_neither_kills_the_worker_nor_the_batch() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(4)
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let t = token;
    // Item 0 cancels the batch while items 1.. wait in the queue: they are
    // skipped, and skipping drops them.
    let out = p.blocking().map_weighted(
        (0..8).map(Bomb).collect(),
        |_| 1,
        move |b: Bomb| {
            let n = b.defuse();
            if n == 0 {
                t.cancel();
            }
            n
        },
    );
    assert_eq!(out.len(), 8);
    assert_eq!(*out[0].as_ref().unwrap(), 0);
    for (i, r) in out.iter().enumerate().skip(1) {
        match r {
            Err(ItemError::Panicked(p)) => {
                assert_eq!(p.message(), format!("bomb {i} dropped"));
            }
            // Not yet submitted when the cancel came: dropped by the feeder.
            Err(ItemError::Cancelled) => {}
            other => panic!("item {i}: {other:?}"),
        }
    }
    let s = p.stats();
    assert_eq!(s.blocking_threads, 1, "the worker survived");
    assert_eq!(s.blocking_in_flight_weight, 0, "every weight given back");
    assert_eq!(s.blocking_queued, 0);
    let p = p.with_cancel(CancelToken::new());
    let next = p.blocking().map(vec![1, 2], |x| x + 1);
    assert_eq!(*next[1].as_ref().unwrap(), 3, "the pool still runs batches");
}

/// A closure whose last handle is dropped on a worker, and whose drop
/// panics.
struct PanicsOnDrop {
    armed: Arc<AtomicBool>,
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if self.armed.load(Ordering::Relaxed) {
            panic!("closure dropped");
        }
    }
}

/// Starts the blocking batch `fut`, waits until its item 0 runs (it says
/// so on `started`), drops the batch's future, and lets the item go on
/// (`release`): the running job is then left holding what the abandoned
/// batch owned.
async fn abandon_while_item_0_runs<F: std::future::Future>(
    fut: F,
    started: mpsc::Receiver<()>,
    release: mpsc::SyncSender<()>,
) {
    let mut fut = Box::pin(fut);
    let r = tokio::time::timeout(Duration::from_millis(1), &mut fut).await;
    assert!(r.is_err());
    tokio::task::spawn_blocking(move || started.recv().unwrap())
        .await
        .unwrap();
    drop(fut);
    release.send(()).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_closure_whose_drop_panics_on_a_worker_does_not_kill_it() {
    let p = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    let guard = PanicsOnDrop {
        armed: Arc::clone(&armed),
    };
    let (started_tx, started_rx) = mpsc::sync_channel::<()>(1);
    let (release_tx, release_rx) = mpsc::sync_channel::<()>(1);
    let release_rx = std::sync::Mutex::new(release_rx);
    let fut = p.blocking().map_async(vec![0u32, 1, 2], move |x| {
        let _keep = &guard;
        if x == 0 {
            started_tx.send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        }
        x
    });
    // Start the batch, then abandon it while item 0 runs: the running job
    // then holds the closure's last handle and drops it on the worker.
    abandon_while_item_0_runs(fut, started_rx, release_tx).await;
    wait_until(Duration::from_secs(10), || {
        let s = p.stats();
        s.blocking_in_flight_weight == 0 && s.blocking_queued == 0
    });
    assert_eq!(p.stats().blocking_threads, 1, "the worker survived");
    let next = p.blocking().map_async(vec![1, 2], |x| x + 1).await;
    assert_eq!(*next[1].as_ref().unwrap(), 3, "the pool still runs batches");
    armed.store(false, Ordering::Relaxed);
}

/// An item whose drop panics only if it is the armed one.
struct Fuse {
    n: u32,
    armed: bool,
}

impl Drop for Fuse {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            panic!("fuse {} dropped", self.n);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_hybrid_item_whose_drop_panics_after_a_cancel_does_not_abort() {
    use futures_util::StreamExt;

    let token = CancelToken::new();
    let p = Processor::builder()
        .cpu_threads(1)
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let (pulled_tx, pulled_rx) = mpsc::sync_channel::<()>(1);
    let pulled_rx = std::sync::Mutex::new(pulled_rx);
    let t = token.clone();
    // Item 0's CPU stage cancels the batch and waits until item 1 has been
    // taken from the input (and so queued behind it on the one CPU
    // thread): item 1 is then skipped by its job on rayon, which drops it
    // there, and its drop panics.
    let items =
        futures_util::stream::iter((0..4).map(|n| Fuse { n, armed: n == 1 })).inspect(move |f| {
            if f.n == 1 {
                let _ = pulled_tx.try_send(());
            }
        });
    let out = p
        .hybrid()
        .try_map_stream(
            items,
            move |mut f: Fuse| {
                f.armed = false;
                if f.n == 0 {
                    t.cancel();
                    pulled_rx
                        .lock()
                        .unwrap()
                        .recv_timeout(Duration::from_secs(10))
                        .expect("item 1 taken from the input");
                }
                Ok::<u32, ()>(f.n)
            },
            |n| async move { Ok(n) },
        )
        .await;
    // Item 0 ran its CPU stage; its I/O stage sees the cancel.
    assert!(
        matches!(out[0], Ok(0) | Err(ItemError::Cancelled)),
        "item 0: {:?}",
        out[0]
    );
    // The cancel has dropped the CPU stage's output, so item 1 is owed a
    // `Cancelled` (its job's result, the drop's panic, had nowhere to go);
    // before, the panic left the rayon job and aborted the process.
    match &out[1] {
        Err(ItemError::Cancelled) => {}
        Err(ItemError::Panicked(p)) => assert_eq!(p.message(), "fuse 1 dropped"),
        other => panic!("item 1: {other:?}"),
    }
    for (i, r) in out.iter().enumerate().skip(2) {
        assert!(matches!(r, Err(ItemError::Cancelled)), "item {i}: {r:?}");
    }
    let again = p
        .with_cancel(CancelToken::new())
        .hybrid()
        .map(vec![1u32, 2], |x| x + 1, |y| async move { y })
        .await;
    assert_eq!(
        *again[1].as_ref().unwrap(),
        3,
        "the pool still runs batches"
    );
}

/// Panics when dropped: held by an item's future across its await.
struct PanicOnDrop(u32);

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("future {} dropped", self.0);
    }
}

/// A cancel drops the futures of the items running inline (a `map` on a
/// current-thread runtime): a future whose `Drop` panics is that item's
/// problem. Before, the panic unwound out of the batch (losing every
/// result) and `FuturesUnordered`, panicking mid-drop, leaked the items
/// after it: their in-flight guards never ran, so `stats().io.in_flight`
/// stayed above 0 for good and the counters no longer added up.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_an_inline_item_whose_drop_panics_on_cancel_is_isolated() {
    let token = CancelToken::new();
    let p = Processor::builder().async_limit(4).build().unwrap();
    let io = p.with_cancel(token.clone()).async_io();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        token.cancel();
    });
    // A task on this current-thread runtime: its items run inline.
    let batch = tokio::spawn(io.map(0..4u32, |x| async move {
        let guard = (x == 1).then(|| PanicOnDrop(x));
        tokio::time::sleep(Duration::from_secs(1)).await;
        std::mem::forget(guard);
        x
    }));
    let out = batch.await.expect("the batch returns its results");
    cancel.await.unwrap();
    for (i, r) in out.iter().enumerate() {
        assert!(matches!(r, Err(ItemError::Cancelled)), "item {i}: {r:?}");
    }
    let s = p.stats().io;
    assert_eq!((s.in_flight, s.awaiting_permit), (0, 0), "{s:?}");
    assert_eq!(s.taken, s.completed() + s.panicked + s.cancelled, "{s:?}");
}

/// The same for a `map` future dropped while its items run inline: the
/// items after the one whose drop panics are dropped too (counted
/// cancelled), not leaked in flight.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn regression_a_dropped_inline_batch_whose_item_drop_panics_leaks_no_item() {
    let p = Processor::builder().async_limit(4).build().unwrap();
    let batch = tokio::spawn(p.async_io().map(0..4u32, |x| async move {
        let guard = (x == 1).then(|| PanicOnDrop(x));
        tokio::time::sleep(Duration::from_secs(1)).await;
        std::mem::forget(guard);
        x
    }));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(p.stats().io.in_flight, 4);
    batch.abort();
    let _ = batch.await;
    let s = p.stats().io;
    assert_eq!((s.in_flight, s.cancelled), (0, 4), "{s:?}");
    assert_eq!(s.taken, s.completed() + s.panicked + s.cancelled, "{s:?}");
}

/// A `Hybrid` batch of 8 items at one permit, with item `armed`'s value a
/// `Fuse` whose `Drop` panics until its I/O stage takes it, cancelled once
/// item 0 holds the permit, item 1 waits for one and items 2–4 are done
/// and wait in the channel (the CPU stage takes no more until the I/O
/// stage asks): the batch's results, and the processor's stats after.
async fn cancel_a_hybrid_batch_with_a_fuse_on(
    armed: u32,
) -> (Vec<Result<u32, ItemError<()>>>, torque_parallel::IoStats) {
    use std::sync::atomic::AtomicUsize;

    let token = CancelToken::new();
    // One CPU thread runs the jobs in order: once item 4's has begun,
    // item 3's has sent its result.
    let p = Processor::builder()
        .async_limit(1)
        .cpu_threads(1)
        .hybrid_buffer(4)
        .build()
        .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let (g, r) = (Arc::clone(&gate), Arc::clone(&ran));
    let batch = tokio::spawn(p.with_cancel(token.clone()).hybrid().try_map(
        0..8u32,
        move |n| {
            r.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(Fuse {
                n,
                armed: n == armed,
            })
        },
        move |mut f: Fuse| {
            f.armed = false;
            let g = Arc::clone(&g);
            async move {
                let _ = g.acquire().await;
                Ok(f.n)
            }
        },
    ));
    common::wait_until_async(Duration::from_secs(10), || {
        ran.load(Ordering::SeqCst) >= 5 && p.stats().io.in_flight >= 1
    })
    .await;
    token.cancel();
    let out = batch.await.expect("the batch returns its results");
    assert_eq!(out.len(), 5, "{out:?}");
    let stats = p.stats().io;
    gate.close();
    (out, stats)
}

/// A cancel drops a `Hybrid` batch's CPU stage, and with it the results
/// done on rayon and waiting in the channel for the I/O stage: one whose
/// `Drop` panics is that item's problem. Before, the panic unwound out of
/// the batch: the caller's `try_map` panicked and every result was lost.
#[tokio::test(flavor = "current_thread")]
async fn regression_a_hybrid_result_whose_drop_panics_in_the_channel_on_cancel_is_isolated() {
    let (out, _) = cancel_a_hybrid_batch_with_a_fuse_on(3).await;
    for (i, r) in out.iter().enumerate() {
        assert!(matches!(r, Err(ItemError::Cancelled)), "item {i}: {r:?}");
    }
}

/// The same for the item a batch holds for its next permit, which a
/// cancel drops: its `Drop`'s panic is that item's `Panicked` (as for an
/// item the CPU stage skips), not the batch's.
#[tokio::test(flavor = "current_thread")]
async fn regression_the_item_waiting_for_a_permit_whose_drop_panics_on_cancel_is_isolated() {
    let (out, s) = cancel_a_hybrid_batch_with_a_fuse_on(1).await;
    match &out[1] {
        Err(ItemError::Panicked(p)) => assert_eq!(p.message(), "fuse 1 dropped"),
        other => panic!("item 1: {other:?}"),
    }
    for (i, r) in out.iter().enumerate().filter(|&(i, _)| i != 1) {
        assert!(matches!(r, Err(ItemError::Cancelled)), "item {i}: {r:?}");
    }
    assert_eq!((s.panicked, s.awaiting_permit), (1, 0), "{s:?}");
}

/// On a multi-thread runtime items are tasks: a cancel aborts them, and a
/// task whose future panics in its `Drop` comes back `Panicked` (tokio's
/// `JoinError`). Its in-flight guard, dropped while that panic unwound,
/// counted it cancelled, so `stats().io.panicked` missed an item that
/// came back `Panicked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_an_aborted_task_whose_drop_panics_is_counted_panicked() {
    let token = CancelToken::new();
    let p = Processor::builder().async_limit(4).build().unwrap();
    let io = p.with_cancel(token.clone()).async_io();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let batch = tokio::spawn(io.map(0..4u32, move |x| {
        let started_tx = started_tx.clone();
        async move {
            let guard = (x == 1).then(|| PanicOnDrop(x));
            started_tx.send(()).unwrap();
            std::future::pending::<()>().await;
            std::mem::forget(guard);
            x
        }
    }));
    for _ in 0..4 {
        started.recv().await.unwrap();
    }
    token.cancel();
    let out = tokio::time::timeout(Duration::from_secs(10), batch)
        .await
        .expect("the cancel ends the batch")
        .expect("the batch returns its results");
    let panicked = out
        .iter()
        .filter(|r| matches!(r, Err(ItemError::Panicked(_))))
        .count();
    assert_eq!(panicked, 1, "{out:?}");
    let s = p.stats().io;
    assert_eq!((s.panicked, s.cancelled), (1, 3), "{s:?}");
    assert_eq!(s.taken, s.completed() + s.panicked + s.cancelled, "{s:?}");
}

/// A result whose drop panics.
struct PanickyResult;

impl Drop for PanickyResult {
    fn drop(&mut self) {
        panic!("result dropped");
    }
}

/// A `map_async` future dropped while its item ran on a worker: the job
/// completed the abandoned batch and held its last handle, whose drop
/// dropped the item's result and unwound out of the worker loop. The pool
/// was a thread short from then on; with one thread, every later batch
/// hung.
#[tokio::test(flavor = "current_thread")]
async fn regression_a_result_whose_drop_panics_in_an_abandoned_batch_does_not_kill_the_worker() {
    let p = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    let (started_tx, started_rx) = mpsc::sync_channel::<()>(1);
    let (release_tx, release_rx) = mpsc::sync_channel::<()>(1);
    let release_rx = std::sync::Mutex::new(release_rx);
    let fut = p.blocking().map_async(vec![0u32], move |_| {
        started_tx.send(()).unwrap();
        release_rx.lock().unwrap().recv().unwrap();
        PanickyResult
    });
    abandon_while_item_0_runs(fut, started_rx, release_tx).await;
    // From a plain thread, so that a hang fails the test instead.
    let (tx, rx) = mpsc::channel();
    let other = p.clone();
    std::thread::spawn(move || {
        let _ = tx.send(other.blocking().map(vec![1, 2], |x| x + 1));
    });
    let next = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the pool still runs batches");
    assert_eq!(*next[1].as_ref().unwrap(), 3);
    assert_eq!(p.stats().blocking_threads, 1, "the worker survived");
}
