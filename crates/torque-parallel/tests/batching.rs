//! The batcher on tokio's paused clock: flush by size, by linger, on close;
//! backpressure; per-batch sink errors.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use torque_parallel::BuildError;
use torque_parallel::batch::{BatchSizer, Batcher, Closed, FlushError, TrySendError};

type Log = Arc<Mutex<Vec<Vec<u32>>>>;

fn recording() -> (
    Log,
    impl FnMut(Vec<u32>) -> std::future::Ready<Result<(), String>> + Send + 'static,
) {
    let log: Log = Arc::default();
    let sink_log = Arc::clone(&log);
    (log, move |batch: Vec<u32>| {
        sink_log.lock().push(batch);
        std::future::ready(Ok(()))
    })
}

#[tokio::test(start_paused = true)]
async fn a_batch_is_written_when_full_and_the_rest_on_close() {
    let (log, sink) = recording();
    let (batcher, driver) = Batcher::builder()
        .max_size(10)
        .max_linger(Duration::from_secs(3600))
        .build(sink)
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let started = Instant::now();
    for i in 0..25 {
        drop(batcher.send(i).await.unwrap());
    }
    drop(batcher);
    let stats = driver.await.unwrap();
    let sizes: Vec<usize> = log.lock().iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!((stats.batches, stats.items, stats.full_batches), (3, 25, 2));
    // Closing flushed the remainder without waiting for the linger.
    assert!(started.elapsed() < Duration::from_secs(1));
    let all: Vec<u32> = log.lock().concat();
    assert_eq!(all, (0..25).collect::<Vec<_>>(), "in order, nothing lost");
}

/// Sends two items 4 ms apart through a batcher that lingers 10 ms: one
/// batch of both, written 10 ms after the first arrived.
async fn assert_two_items_linger_10ms(batcher: &Batcher<u32, String>, log: &Log) {
    let started = Instant::now();
    let first = batcher.send(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4)).await;
    let second = batcher.send(2).await.unwrap();
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(10));
    assert_eq!(*log.lock(), [vec![1, 2]]);
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_is_written_when_its_first_item_has_lingered() {
    let (log, sink) = recording();
    let (batcher, driver) = Batcher::builder()
        .max_size(100)
        .max_linger(Duration::from_millis(10))
        .build(sink)
        .unwrap();
    tokio::spawn(driver.run());
    assert_two_items_linger_10ms(&batcher, &log).await;
}

/// With an adaptive size the default linger is zero: the sizer's size is a
/// cap, and holding a partial batch for the fixed-size default (5 ms) made
/// the adaptive batcher's p99 up to ~100 × the best static configuration's
/// at light load (`examples/batch_sim.rs --adaptive-linger-us 5000`).
#[tokio::test(start_paused = true)]
async fn regression_an_adaptive_batch_is_not_held_for_the_fixed_size_default_linger() {
    let sizer = BatchSizer::builder().max_size(1_000).build().unwrap();
    let (log, sink) = recording();
    let (batcher, driver) = Batcher::builder().adaptive(sizer).build(sink).unwrap();
    tokio::spawn(driver.run());
    let started = Instant::now();
    batcher.send(7).await.unwrap().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(*log.lock(), [vec![7]]);

    // A fixed size keeps its 5 ms default.
    let (log, sink) = recording();
    let (batcher, driver) = Batcher::builder().max_size(100).build(sink).unwrap();
    tokio::spawn(driver.run());
    let started = Instant::now();
    batcher.send(8).await.unwrap().await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(5));
    assert_eq!(*log.lock(), [vec![8]]);
}

#[tokio::test(start_paused = true)]
async fn an_explicit_linger_holds_an_adaptive_batch() {
    let sizer = BatchSizer::builder().max_size(1_000).build().unwrap();
    let (log, sink) = recording();
    let (batcher, driver) = Batcher::builder()
        .max_linger(Duration::from_millis(10))
        .adaptive(sizer)
        .build(sink)
        .unwrap();
    tokio::spawn(driver.run());
    assert_two_items_linger_10ms(&batcher, &log).await;
}

/// tokio's timer ticks in whole milliseconds and rounds a deadline up to
/// the next tick: a batch lingering 1.5 ms was written after 2 ms, and one
/// lingering 200 µs after 1 ms — past the `max_linger` that bounds it.
#[tokio::test(start_paused = true)]
async fn regression_a_batch_is_never_written_later_than_its_linger() {
    for micros in [200, 1_500, 2_999] {
        let linger = Duration::from_micros(micros);
        let (log, sink) = recording();
        let (batcher, driver) = Batcher::builder()
            .max_size(100)
            .max_linger(linger)
            .build(sink)
            .unwrap();
        tokio::spawn(driver.run());
        let started = Instant::now();
        batcher.send(7).await.unwrap().await.unwrap();
        assert!(
            started.elapsed() <= linger,
            "written after {:?}, linger {linger:?}",
            started.elapsed()
        );
        assert_eq!(*log.lock(), [vec![7]]);
    }
}

#[tokio::test(start_paused = true)]
async fn zero_linger_writes_what_is_queued_right_away() {
    let (log, sink) = recording();
    let (batcher, driver) = Batcher::builder()
        .max_size(100)
        .max_linger(Duration::ZERO)
        .build(sink)
        .unwrap();
    tokio::spawn(driver.run());
    let started = Instant::now();
    batcher.send(7).await.unwrap().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(*log.lock(), [vec![7]]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_pushes_back_and_nothing_is_lost() {
    let gate = Arc::new(Semaphore::new(0));
    let written = Arc::new(Mutex::new(Vec::new()));
    let (sink_gate, sink_written) = (Arc::clone(&gate), Arc::clone(&written));
    let (batcher, driver) = Batcher::builder()
        .max_size(2)
        .max_linger(Duration::ZERO)
        .queue_capacity(4)
        .build(move |batch: Vec<u32>| {
            let (gate, written) = (Arc::clone(&sink_gate), Arc::clone(&sink_written));
            async move {
                gate.acquire().await.expect("open").forget();
                written.lock().extend(batch);
                Ok::<(), String>(())
            }
        })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let mut receipts = Vec::new();
    let mut next = 0;
    loop {
        match batcher.try_send(next) {
            Ok(receipt) => {
                receipts.push(receipt);
                next += 1;
            }
            Err(TrySendError::Full(item)) => {
                assert_eq!(item, next, "the refused item is given back");
                // Let the driver take a batch into the (blocked) sink, then
                // the queue is full for good.
                tokio::task::yield_now().await;
                if batcher.try_send(next).is_err() {
                    break;
                }
                next += 1;
            }
            Err(TrySendError::Closed(_)) => panic!("closed"),
        }
        assert!(batcher.queued() <= 4);
    }
    // At most the queue plus the one batch the sink holds.
    assert!(next as usize <= 4 + 2, "{next} accepted");
    assert_eq!(batcher.queued(), 4);
    gate.add_permits(100);
    drop(batcher);
    for receipt in receipts {
        receipt.await.unwrap();
    }
    let stats = driver.await.unwrap();
    assert_eq!(stats.items, u64::from(next));
    let mut written = written.lock().clone();
    written.sort_unstable();
    assert_eq!(written, (0..next).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_sink_error_is_returned_to_every_item_of_that_batch_only() {
    let (batcher, driver) = Batcher::builder()
        .max_size(2)
        .build(|batch: Vec<u32>| {
            std::future::ready(if batch.contains(&3) {
                Err(format!("cannot write {batch:?}"))
            } else {
                Ok(())
            })
        })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let mut receipts = Vec::new();
    for i in 1..=6 {
        receipts.push(batcher.send(i).await.unwrap());
    }
    let mut outcomes = Vec::new();
    for receipt in receipts {
        outcomes.push(match receipt.await {
            Ok(()) => "ok".to_string(),
            Err(FlushError::Sink(e)) => (*e).clone(),
            Err(other) => panic!("{other}"),
        });
    }
    // Live counters, while the batcher is still open.
    let live = batcher.stats();
    assert_eq!(
        (
            live.batches,
            live.items,
            live.failed_batches,
            live.queued,
            live.size
        ),
        (3, 6, 1, 0, 2)
    );
    drop(batcher);
    assert_eq!(
        outcomes,
        [
            "ok",
            "ok",
            "cannot write [3, 4]",
            "cannot write [3, 4]",
            "ok",
            "ok"
        ]
    );
    let stats = driver.await.unwrap();
    assert_eq!((stats.failed_batches, stats.failed_items), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn many_producers_lose_nothing_when_they_all_close() {
    let (log, sink) = recording();
    let (batcher, driver) = Batcher::builder()
        .max_size(16)
        .max_linger(Duration::from_millis(1))
        .queue_capacity(8)
        .build(sink)
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let mut producers = Vec::new();
    for p in 0..8u32 {
        let batcher = batcher.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..250 {
                drop(batcher.send(p * 1_000 + i).await.unwrap());
            }
        }));
    }
    drop(batcher);
    for producer in producers {
        producer.await.unwrap();
    }
    let stats = driver.await.unwrap();
    assert_eq!(stats.items, 2_000);
    let mut all = log.lock().concat();
    all.sort_unstable();
    let expected: Vec<u32> = (0..8u32)
        .flat_map(|p| (0..250).map(move |i| p * 1_000 + i))
        .collect();
    assert_eq!(all, expected);
    assert!(log.lock().iter().all(|b| (1..=16).contains(&b.len())));
}

#[tokio::test(start_paused = true)]
async fn sending_to_a_stopped_driver_gives_the_item_back() {
    let (_log, sink) = recording();
    let (batcher, driver) = Batcher::builder().build(sink).unwrap();
    drop(driver);
    assert!(matches!(batcher.send(5).await, Err(Closed(5))));
    assert!(matches!(batcher.try_send(6), Err(TrySendError::Closed(6))));
}

#[tokio::test(start_paused = true)]
async fn a_receipt_whose_driver_is_dropped_says_so() {
    let (_log, sink) = recording();
    let (batcher, driver) = Batcher::builder().build(sink).unwrap();
    let receipt = batcher.send(1).await.unwrap();
    drop(driver);
    assert!(matches!(receipt.await, Err(FlushError::Dropped)));
}

#[test]
fn zero_sizes_are_build_errors() {
    let (_log, sink) = recording();
    let err = Batcher::builder().max_size(0).build(sink).unwrap_err();
    assert!(matches!(err, BuildError::Zero("max_size")), "{err}");
    let (_log, sink) = recording();
    let err = Batcher::builder()
        .queue_capacity(0)
        .build(sink)
        .unwrap_err();
    assert!(matches!(err, BuildError::Zero("queue_capacity")), "{err}");
}

/// Items the driver has taken from the queue are in no counter until their
/// batch is written: `stats()` showed a batcher holding 3 items in a
/// lingering batch, then 5 in a write the sink had not finished, as empty
/// (`queued` 0, `items` 0).
#[tokio::test(start_paused = true)]
async fn regression_items_held_in_a_lingering_or_writing_batch_show_in_stats() {
    let gate = Arc::new(Semaphore::new(0));
    let sink_gate = Arc::clone(&gate);
    let (batcher, driver) = Batcher::builder()
        .max_size(5)
        .max_linger(Duration::from_secs(3600))
        .build(move |_batch: Vec<u32>| {
            let gate = Arc::clone(&sink_gate);
            async move {
                gate.acquire().await.expect("open").forget();
                Ok::<(), String>(())
            }
        })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let mut receipts = Vec::new();
    for i in 0..3 {
        receipts.push(batcher.send(i).await.unwrap());
    }
    // Let the driver take the items into its batch (it lingers for more).
    while batcher.queued() > 0 {
        tokio::task::yield_now().await;
    }
    let s = batcher.stats();
    assert_eq!((s.queued, s.pending, s.items), (0, 3, 0), "lingering");

    // Two more fill the batch: the sink holds all five until the gate opens.
    for i in 3..5 {
        receipts.push(batcher.send(i).await.unwrap());
    }
    while batcher.queued() > 0 {
        tokio::task::yield_now().await;
    }
    tokio::task::yield_now().await;
    let s = batcher.stats();
    assert_eq!((s.queued, s.pending, s.items), (0, 5, 0), "being written");

    gate.add_permits(1);
    for receipt in receipts {
        receipt.await.unwrap();
    }
    let s = batcher.stats();
    assert_eq!((s.queued, s.pending, s.items, s.batches), (0, 0, 5, 1));
    drop(batcher);
    assert_eq!(driver.await.unwrap().pending, 0);
}

/// Regression: a sink that panicked unwound out of the driver, so one bad
/// batch stopped the batcher for good (its receipts said `Dropped`, every
/// later `send` `Closed`). Now the panic fails that batch alone, with the
/// panic's message, and the driver goes on with the next.
#[tokio::test(start_paused = true)]
async fn a_sink_that_panics_fails_its_batch_alone_and_the_batcher_goes_on() {
    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (batcher, driver) = Batcher::builder()
        .max_size(2)
        .build({
            let written = Arc::clone(&written);
            move |batch: Vec<u32>| {
                let written = Arc::clone(&written);
                async move {
                    assert!(!batch.contains(&13), "sink bug: row {batch:?}");
                    written.lock().unwrap().extend(batch);
                    Ok::<(), String>(())
                }
            }
        })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let bad = [
        batcher.send(13).await.unwrap(),
        batcher.send(1).await.unwrap(),
    ];
    for receipt in bad {
        match receipt.await {
            Err(FlushError::Panicked(p)) => {
                assert!(p.to_string().contains("sink bug"), "{p}");
            }
            other => panic!("expected the sink's panic, got {other:?}"),
        }
    }
    let good = [
        batcher.send(2).await.expect("still open"),
        batcher.send(3).await.expect("still open"),
    ];
    for receipt in good {
        receipt.await.expect("written after the panicked batch");
    }
    assert_eq!(*written.lock().unwrap(), vec![2, 3]);
    let s = batcher.stats();
    assert_eq!(
        (
            s.queued,
            s.pending,
            s.items,
            s.batches,
            s.failed_batches,
            s.failed_items
        ),
        (0, 0, 4, 2, 1, 2)
    );
    drop(batcher);
    driver.await.expect("the driver did not panic");
}
