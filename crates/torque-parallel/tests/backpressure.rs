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
        let weighed = AtomicU64::new(0);
        let out = p.map_weighted(&weights, |&w| {
            weighed.fetch_add(1, Ordering::SeqCst);
            w
        }, |&w| {
            gauge.enter(w);
            std::thread::sleep(Duration::from_micros(50));
            gauge.leave(w);
            w
        });
        let values: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
        prop_assert_eq!(&values, &weights);
        let bound = budget.max(*weights.iter().max().unwrap());
        prop_assert!(gauge.peak.load(Ordering::SeqCst) <= bound);
        // Each item is weighed once, also the one that starts a new wave.
        prop_assert_eq!(weighed.load(Ordering::SeqCst), weights.len() as u64);
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

/// The `Async` strategy against a model: results in input order, never more
/// than the limit running, never more than limit + 1 items taken from the
/// input and not done — whatever the limit and the latencies.
#[cfg(feature = "tokio")]
mod async_io {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    use proptest::prelude::*;
    use torque_parallel::Processor;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn async_in_flight_and_input_stay_within_the_limit(
            delays in prop::collection::vec(0u64..=20, 0..80),
            limit in 1usize..=12,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let p = Processor::builder().async_limit(limit).build().unwrap();
            let taken = Arc::new(AtomicUsize::new(0));
            let done = Arc::new(AtomicUsize::new(0));
            let running = Arc::new(AtomicUsize::new(0));
            let worst = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
            let input = {
                let taken = Arc::clone(&taken);
                delays.clone().into_iter().inspect(move |_| {
                    taken.fetch_add(1, SeqCst);
                })
            };
            let (t, d, r, w) = (Arc::clone(&taken), Arc::clone(&done), Arc::clone(&running), Arc::clone(&worst));
            let out = rt.block_on(p.async_io().map(input, move |ms| {
                let (t, d, r, w) = (Arc::clone(&t), Arc::clone(&d), Arc::clone(&r), Arc::clone(&w));
                async move {
                    let now = r.fetch_add(1, SeqCst) + 1;
                    w.0.fetch_max(now, SeqCst);
                    w.1.fetch_max(t.load(SeqCst) - d.load(SeqCst), SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    r.fetch_sub(1, SeqCst);
                    d.fetch_add(1, SeqCst);
                    ms
                }
            }));
            let got: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
            prop_assert_eq!(got, delays);
            prop_assert!(worst.0.load(SeqCst) <= limit);
            prop_assert!(worst.1.load(SeqCst) <= limit + 1);
            prop_assert_eq!(p.stats().io.in_flight, 0);
        }
    }
}
