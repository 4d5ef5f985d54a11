//! The memory budget bounds the weight in flight; the queue bounds the jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use torque_parallel::Processor;

/// Tracks the weight of the items running right now and its maximum.
#[derive(Default)]
struct Gauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl Gauge {
    fn enter(&self, w: u64) {
        let now = self.now.fetch_add(w, Ordering::SeqCst) + w;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self, w: u64) {
        self.now.fetch_sub(w, Ordering::SeqCst);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn blocking_in_flight_weight_never_exceeds_the_budget(
        weights in prop::collection::vec(1u64..=60, 1..60),
        budget in 10u64..=120,
        threads in 1usize..=4,
        queue in 1usize..=6,
    ) {
        let p = Processor::builder()
            .blocking_threads(threads)
            .queue_capacity(queue)
            .memory_budget(budget)
            .build()
            .unwrap();
        let gauge = Arc::new(Gauge::default());
        let g = Arc::clone(&gauge);
        let out = p.blocking().map_weighted(weights.clone(), |&w| w, move |w| {
            g.enter(w);
            std::thread::sleep(Duration::from_micros(50));
            g.leave(w);
            w
        });
        prop_assert_eq!(out.len(), weights.len());
        // An item heavier than the budget is admitted alone.
        let bound = budget.max(*weights.iter().max().unwrap());
        prop_assert!(gauge.peak.load(Ordering::SeqCst) <= bound);
        let stats = p.stats();
        prop_assert!(stats.blocking_peak_in_flight_weight <= bound,
            "peak {} > bound {}", stats.blocking_peak_in_flight_weight, bound);
        prop_assert_eq!(stats.blocking_in_flight_weight, 0);
    }

    #[test]
    fn cpu_weighted_waves_never_exceed_the_budget(
        weights in prop::collection::vec(1u64..=60, 1..80),
        budget in 10u64..=120,
    ) {
        let p = Processor::builder().memory_budget(budget).build().unwrap();
        let gauge = Gauge::default();
        let out = p.map_weighted(&weights, |&w| w, |&w| {
            gauge.enter(w);
            std::thread::sleep(Duration::from_micros(50));
            gauge.leave(w);
            w
        });
        let values: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
        prop_assert_eq!(&values, &weights);
        let bound = budget.max(*weights.iter().max().unwrap());
        prop_assert!(gauge.peak.load(Ordering::SeqCst) <= bound);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn async_batch_waits_for_room_without_blocking_the_runtime() {
    // Items block until the runtime's other task releases them: if
    // `map_async` blocked the runtime's only thread, this would never finish.
    let p = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(1)
        .memory_budget(2)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let batch = p.blocking().map_weighted_async(
        (0..5u32).collect(),
        |_| 1,
        move |x| {
            rx.lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))
                .map(|()| x)
        },
    );
    let release = async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(()).unwrap();
        }
    };
    let (out, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(batch, release)
    })
    .await
    .expect("the batch finishes");
    let values: Vec<u32> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, vec![0, 1, 2, 3, 4]);
    assert!(p.stats().blocking_peak_in_flight_weight <= 2);
}
