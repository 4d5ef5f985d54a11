//! Limit algorithms and the batch sizer fed odd latencies — zero,
//! `Duration::MAX`, centuries — through their public sans-IO APIs: no
//! panic, and the limit stays within its bounds.

use std::time::{Duration, Instant};

use torque_parallel::batch::BatchSizer;
use torque_parallel::limit::{
    Adaptive, Aimd, Algorithm, Fixed, Gradient2, Outcome, Sample, Vegas, Windowed,
};

const ODD: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_secs(u64::MAX / 2),
    Duration::MAX,
];

/// Every algorithm with bounds 2..=50, windows that close on each sample.
fn algorithms() -> Vec<(&'static str, Box<dyn Algorithm>)> {
    vec![
        ("fixed", Box::new(Fixed::new(3))),
        (
            "aimd",
            Box::new(Aimd::builder().min_limit(2).max_limit(50).build().unwrap()),
        ),
        (
            "vegas",
            Box::new(Vegas::builder().min_limit(2).max_limit(50).build().unwrap()),
        ),
        (
            "gradient2",
            Box::new(
                Gradient2::builder()
                    .min_limit(2)
                    .max_limit(50)
                    .build()
                    .unwrap(),
            ),
        ),
        (
            "windowed",
            Box::new(
                Windowed::builder(Vegas::builder().min_limit(2).max_limit(50).build().unwrap())
                    .min_samples(1)
                    .min_window(Duration::ZERO)
                    .build()
                    .unwrap(),
            ),
        ),
        (
            "adaptive",
            Box::new(
                Adaptive::builder()
                    .min_limit(2)
                    .max_limit(50)
                    .min_samples(2)
                    .build()
                    .unwrap(),
            ),
        ),
    ]
}

#[test]
fn regression_huge_latencies_do_not_panic_an_algorithm() {
    for latency in ODD {
        for (name, mut algorithm) in algorithms() {
            let t0 = Instant::now();
            for i in 0..300u64 {
                // An overload now and then resets the windows.
                let outcome = if i % 100 == 99 {
                    Outcome::Overload
                } else {
                    Outcome::Success
                };
                let sample = Sample::new(t0 + Duration::from_millis(i), latency, 50, outcome)
                    .with_admission(i, i + 50, 49);
                let limit = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    algorithm.update(&sample)
                }))
                .unwrap_or_else(|_| panic!("{name} panicked on sample {i} of {latency:?}"));
                let bounds = if name == "fixed" { 3..=3 } else { 2..=50 };
                assert!(bounds.contains(&limit), "{name}, {latency:?}: {limit}");
            }
        }
    }
}

#[test]
fn regression_adaptive_reports_a_baseline_of_centuries_without_panicking() {
    let mut adaptive = Adaptive::builder().min_samples(2).build().unwrap();
    let t0 = Instant::now();
    // The start-up probe's window: 32 samples, then its stragglers, for
    // as long as a window waits for them (at most 2^32 s).
    for i in 0..100u64 {
        adaptive.update(
            &Sample::new(
                t0 + Duration::from_secs(i << 32),
                Duration::MAX,
                4,
                Outcome::Success,
            )
            .with_admission(i, i + 4, 3),
        );
    }
    assert_eq!(adaptive.baseline(), Some(Duration::MAX));
}

#[test]
fn regression_a_batch_sizer_that_saw_duration_max_reports_its_model() {
    let mut sizer = BatchSizer::builder().build().unwrap();
    for n in [1, 2, 1, 2] {
        sizer.observe(n, Duration::MAX);
    }
    // Fitted: an overhead of 2^64 s, free items.
    let model = sizer.model().expect("two sizes seen");
    assert_eq!(model.overhead, Duration::MAX);
    assert!((1..=1_000).contains(&sizer.next_size()));
}
