//! A cancelled batch stops early and leaves nothing behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use torque_parallel::{CancelToken, ItemError, Processor};

mod common;
use common::{spin, wait_until};

#[test]
fn cpu_cancel_from_an_item_skips_the_rest() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let items: Vec<u32> = (0..2_000).collect();
    let ran = AtomicUsize::new(0);
    let out = p.map(&items, |&x| {
        std::thread::sleep(Duration::from_micros(200));
        ran.fetch_add(1, Ordering::Relaxed);
        if x == 10 {
            token.cancel();
        }
        x
    });
    let ran = ran.into_inner();
    let cancelled = out
        .iter()
        .filter(|r| matches!(r, Err(ItemError::Cancelled)))
        .count();
    assert_eq!(ran + cancelled, items.len());
    // At most the items already running on the other threads finish.
    assert!(ran < 100, "{ran} items ran after the cancel");
    assert!(out[10].is_ok());
}

#[test]
fn cpu_cancel_from_another_thread_stops_the_batch() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let (started_tx, started_rx) = mpsc::sync_channel::<()>(1);
    let canceller = std::thread::spawn(move || {
        started_rx.recv().unwrap();
        token.cancel();
    });
    let items: Vec<u32> = (0..100_000).collect();
    let ran = AtomicUsize::new(0);
    let summary = p.for_each(&items, |_| {
        let _ = started_tx.try_send(());
        std::thread::sleep(Duration::from_micros(100));
        ran.fetch_add(1, Ordering::Relaxed);
    });
    canceller.join().unwrap();
    assert!(summary.cancelled > 0);
    assert_eq!(summary.cancelled + ran.into_inner(), items.len());
}

#[test]
fn blocking_cancel_skips_queued_items_and_releases_the_closure() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .blocking_threads(2)
        .queue_capacity(4)
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let marker = Arc::new(());
    let held = Arc::clone(&marker);
    let t = token;
    let out = p.blocking().map((0..1_000u32).collect(), move |x| {
        let _keep = &held;
        std::thread::sleep(Duration::from_millis(1));
        if x == 5 {
            t.cancel();
        }
        x
    });
    let cancelled = out
        .iter()
        .filter(|r| matches!(r, Err(ItemError::Cancelled)))
        .count();
    assert!(cancelled > 900, "only {cancelled} cancelled");
    assert!(out[5].is_ok());
    assert_eq!(
        Arc::strong_count(&marker),
        1,
        "no job still holds the closure"
    );
    assert_eq!(p.stats().blocking_queued, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_an_async_batch_cancels_it_and_leaks_nothing() {
    let p = Processor::builder()
        .blocking_threads(2)
        .queue_capacity(2)
        .build()
        .unwrap();
    let marker = Arc::new(());
    let held = Arc::clone(&marker);
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ran);
    let fut = p.blocking().map_async((0..10_000u32).collect(), move |x| {
        let _keep = &held;
        counter.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1));
        x
    });
    // Poll it for a while, then drop it mid-batch.
    let r = tokio::time::timeout(Duration::from_millis(20), fut).await;
    assert!(r.is_err(), "the batch cannot finish in 20 ms");
    wait_until(Duration::from_secs(10), || Arc::strong_count(&marker) == 1);
    assert!(ran.load(Ordering::Relaxed) < 10_000);
    wait_until(Duration::from_secs(10), || {
        let s = p.stats();
        s.blocking_queued == 0 && s.blocking_in_flight_weight == 0
    });
}

#[tokio::test(flavor = "current_thread")]
async fn async_batch_with_a_cancelled_token_resolves_as_cancelled() {
    let token = CancelToken::new();
    token.cancel();
    let p = Processor::builder()
        .blocking_threads(1)
        .build()
        .unwrap()
        .with_cancel(token);
    let out = p.blocking().map_async(vec![1, 2, 3], |x| x).await;
    assert!(out.iter().all(|r| matches!(r, Err(ItemError::Cancelled))));
}

/// An item the processor learns is worth rayon (~200 µs each).
fn slow_item(x: &u64) -> u64 {
    spin(Duration::from_micros(200));
    *x
}

/// Occupies the only thread of `p`'s dedicated pool with another batch's
/// item until `release` is set; returns once that item is running.
fn saturate(
    p: &Processor,
    release: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
) -> std::thread::JoinHandle<()> {
    let (started_tx, started_rx) = mpsc::sync_channel::<()>(2);
    let p = p.clone();
    let holder = std::thread::spawn(move || {
        // Item 0 runs in the timed prefix on this thread; its cost sends
        // the rest to the pool, where item 1 holds the only worker.
        p.map(&[0u64, 1, 2], |&x| {
            if x == 0 {
                spin(Duration::from_millis(2));
                return;
            }
            let _ = started_tx.try_send(());
            let (lock, cvar) = &*release;
            let mut go = lock.lock().unwrap();
            while !*go {
                go = cvar.wait(go).unwrap();
            }
        });
    });
    started_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the holding batch never reached the pool");
    holder
}

/// Regression: a batch whose token was already cancelled (or was cancelled
/// during its timed prefix) still handed its items to rayon, and waited for
/// a worker of a pool saturated by another batch before every item came
/// back `Cancelled`: as long as the other batch ran, however long.
#[test]
fn regression_a_cancelled_batch_does_not_wait_for_a_saturated_pool() {
    let p = Processor::builder().cpu_threads(1).build().unwrap();
    let items = [0u64; 8];
    // Learn that these items are worth a parallel run.
    p.map(&items, slow_item);
    assert!(
        p.learned_cost(&slow_item)
            .is_some_and(|c| c * 8 >= Duration::from_micros(100)),
        "learned {:?}",
        p.learned_cost(&slow_item)
    );
    let release = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let holder = saturate(&p, Arc::clone(&release));

    let token = CancelToken::new();
    token.cancel();
    let cancelled = p.with_cancel(token);
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Warm and cancelled before the call.
        let warm = cancelled.map(&items, slow_item);
        // Cold (a closure of its own), cancelled by its first item, in the
        // timed prefix, before the rest would go to rayon.
        let token = CancelToken::new();
        let cold = cancelled.with_cancel(token.clone()).map(&items, |&x| {
            spin(Duration::from_millis(1));
            token.cancel();
            x
        });
        let _ = done_tx.send((warm, cold));
    });
    let outcome = done_rx.recv_timeout(Duration::from_secs(20));
    // Free the pool whatever happened, so the test ends either way.
    *release.0.lock().unwrap() = true;
    release.1.notify_all();
    holder.join().unwrap();
    let (warm, cold) = outcome.expect("the cancelled batch waited for the saturated pool");
    assert!(warm.iter().all(|r| matches!(r, Err(ItemError::Cancelled))));
    assert!(cold[0].is_ok());
    assert!(
        cold[1..]
            .iter()
            .all(|r| matches!(r, Err(ItemError::Cancelled)))
    );
}

/// A cancelled `map_weighted` weighed every item it would never run: the
/// weigher (user code) ran for nothing, and where it panicked the item came
/// back `Panicked` instead of `Cancelled`.
#[test]
fn regression_a_cancelled_map_weighted_weighs_no_item_it_skips() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .memory_budget(2)
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let items: Vec<u64> = (0..10).collect();
    let weighed = AtomicUsize::new(0);
    let out = p.map_weighted(
        &items,
        |&x| {
            weighed.fetch_add(1, Ordering::Relaxed);
            // Item 3 is the first of the third wave (budget 2, weight 1
            // each): by then the token is cancelled.
            assert!(x < 3, "weighed item {x} after the cancel");
            1
        },
        |&x| {
            if x == 1 {
                token.cancel();
            }
            x
        },
    );
    assert_eq!(out.len(), 10);
    assert_eq!(*out[1].as_ref().unwrap(), 1);
    for (i, r) in out.iter().enumerate().skip(2) {
        assert!(matches!(r, Err(ItemError::Cancelled)), "item {i}: {r:?}");
    }
    // The first wave (items 0 and 1) and item 2, which ended it and was
    // weighed before the cancel.
    assert_eq!(weighed.load(Ordering::Relaxed), 3);
}
