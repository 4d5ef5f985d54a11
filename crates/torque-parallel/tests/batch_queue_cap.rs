//! The adaptive batcher in an open loop, on tokio's paused clock: Poisson
//! arrivals at 0.9 of what the sink can carry. The sizer must cap batches
//! at a few times the keep-up size (the smallest batch whose write lasts as
//! long as it takes its items to arrive) instead of letting one write grow
//! to the latency target, and must still keep up.
//!
//! The sink costs `(1 ms + n × 1 ms) × U(0.8, 1.2)`: the 10 µs +
//! 10 µs per item scaled 100×, because tokio's timers tick in whole
//! milliseconds. At 0.9 of the capacity at 1000 items per batch (λ ≈ 0.9
//! items per ms), the keep-up size is `λ·O / (1 − λ·c)` ≈ 9 items, while the
//! latency target (1 s) alone would allow ~1000.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use torque_parallel::batch::{BatchSizer, Batcher};

/// SplitMix64 (Steele, Lea & Flood, OOPSLA 2014).
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[tokio::test(start_paused = true)]
async fn open_loop_batches_are_capped_near_the_keep_up_size_and_keep_up() {
    let (overhead, per_item) = (Duration::from_millis(1), Duration::from_millis(1));
    let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
    let noise = Arc::new(Mutex::new(SplitMix(3)));
    let seen = Arc::clone(&sizes);
    let write = move |batch: Vec<u32>| {
        let n = u32::try_from(batch.len()).expect("small batch");
        seen.lock().push(batch.len());
        let cost = (overhead + per_item * n).mul_f64(0.8 + 0.4 * noise.lock().next_f64());
        async move {
            tokio::time::sleep(cost).await;
            Ok::<(), String>(())
        }
    };
    let sizer = BatchSizer::builder()
        .max_size(1_000)
        .latency_target(Duration::from_secs(1))
        .build()
        .expect("valid");
    let (batcher, driver) = Batcher::builder()
        .adaptive(sizer)
        .max_linger(Duration::ZERO)
        .queue_capacity(100_000)
        .build(write)
        .expect("valid");
    let driver = tokio::spawn(driver.run());

    // Poisson arrivals at 0.9 × 1000 / (1 ms + 1000 ms) per ms.
    let rate_per_ms = 0.9 * 1_000.0 / 1_001.0;
    let items = 6_000u32;
    let mut arrivals = SplitMix(11);
    let started = Instant::now();
    let mut at = 0.0f64;
    for i in 0..items {
        at += -(1.0 - arrivals.next_f64()).ln() / rate_per_ms;
        tokio::time::sleep_until(started + Duration::from_secs_f64(at / 1e3)).await;
        drop(batcher.send(i).await.expect("open"));
    }
    let sent_for = started.elapsed();
    drop(batcher);
    let stats = driver.await.expect("driver");
    assert_eq!(stats.items, u64::from(items), "nothing lost");

    // It kept up: the backlog at the end drains in a few writes, not in a
    // share of the run.
    let drained_for = started.elapsed() - sent_for;
    assert!(
        drained_for < sent_for / 20,
        "the batcher fell behind: {drained_for:?} to drain after {sent_for:?} of arrivals"
    );
    // The sizer caps the batches a few times above the keep-up size (~9)
    // rather than at the ~1000 items the latency target allows.
    let sizes = sizes.lock();
    let biggest = *sizes.iter().max().expect("batches");
    assert!(
        (9..=60).contains(&stats.size),
        "size recommended at the end: {}",
        stats.size
    );
    assert!(biggest <= 120, "a batch of {biggest} items");
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    assert!(
        (5.0..=20.0).contains(&mean),
        "mean batch {mean:.1}, expected near the keep-up size"
    );
}

/// A load step: Poisson arrivals at 0.1 of the capacity, then at 0.9. The
/// cap learnt at the low rate (a few items) cannot carry the new rate, and
/// the ~1000-batch arrival average would take a long time to see it; the
/// first items' waits must lift the cap at once, so the backlog never grows
/// past a few latency targets (worst item 434 ms with the lift, 1.71 s without,
/// for a 200 ms target).
#[tokio::test(start_paused = true)]
async fn a_load_step_lifts_the_cap_through_the_queue_age() {
    let (overhead, per_item) = (Duration::from_millis(1), Duration::from_millis(1));
    let noise = Arc::new(Mutex::new(SplitMix(5)));
    let write = move |batch: Vec<Instant>| {
        let n = u32::try_from(batch.len()).expect("small batch");
        let cost = (overhead + per_item * n).mul_f64(0.8 + 0.4 * noise.lock().next_f64());
        async move {
            tokio::time::sleep(cost).await;
            Ok::<(), String>(())
        }
    };
    let target = Duration::from_millis(200);
    let sizer = BatchSizer::builder()
        .max_size(1_000)
        .latency_target(target)
        .build()
        .expect("valid");
    let (batcher, driver) = Batcher::builder()
        .adaptive(sizer)
        .queue_capacity(100_000)
        .build(write)
        .expect("valid");
    let driver = tokio::spawn(driver.run());

    let capacity_per_ms = 1_000.0 / 1_001.0;
    let mut arrivals = SplitMix(17);
    let started = Instant::now();
    let mut at = 0.0f64;
    let mut receipts = Vec::new();
    for (load, items) in [(0.1, 1_500u32), (0.9, 6_000)] {
        for _ in 0..items {
            at += -(1.0 - arrivals.next_f64()).ln() / (load * capacity_per_ms);
            tokio::time::sleep_until(started + Duration::from_secs_f64(at / 1e3)).await;
            let sent = Instant::now();
            let receipt = batcher.send(sent).await.expect("open");
            receipts.push(tokio::spawn(async move {
                receipt.await.expect("written");
                sent.elapsed()
            }));
        }
    }
    drop(batcher);
    let stats = driver.await.expect("driver");
    let mut worst = Duration::ZERO;
    for receipt in receipts {
        worst = worst.max(receipt.await.expect("receipt task"));
    }
    assert_eq!(stats.items, 7_500);
    assert!(
        worst < target * 3,
        "an item took {worst:?} after the load step (target {target:?})"
    );
}
