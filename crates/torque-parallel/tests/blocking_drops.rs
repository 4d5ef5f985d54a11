//! A panicking `Drop` of user data inside a blocking job (an item skipped
//! after a cancel, the last handle to the closure) is isolated like a
//! panicking item: the worker survives, the job's weight is given back and
//! the batch completes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use torque_parallel::{CancelToken, ItemError, Processor};

/// Waits for `cond`, failing the test after `limit` rather than hanging.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        std::thread::yield_now();
    }
}

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
    let t = token.clone();
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
    let mut fut = Box::pin(fut);
    let r = tokio::time::timeout(Duration::from_millis(1), &mut fut).await;
    assert!(r.is_err());
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    drop(fut);
    release_tx.send(()).unwrap();
    wait_until(Duration::from_secs(10), || {
        let s = p.stats();
        s.blocking_in_flight_weight == 0 && s.blocking_queued == 0
    });
    assert_eq!(p.stats().blocking_threads, 1, "the worker survived");
    let next = p.blocking().map_async(vec![1, 2], |x| x + 1).await;
    assert_eq!(*next[1].as_ref().unwrap(), 3, "the pool still runs batches");
    armed.store(false, Ordering::Relaxed);
}
