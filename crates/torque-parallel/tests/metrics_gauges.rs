//! The `metrics` gauges must settle on the true value once work ends, even
//! when several threads release permits at once.
#![cfg(feature = "metrics")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use torque_parallel::limit::{ConcurrencyLimiter, Fixed, Limiter};

/// Keeps the last value set on the limiter's in-flight gauge; a recorder
/// that does some work per update (as real ones do: hashing, locking).
struct InFlightGauge(Arc<AtomicU64>);

struct Cell(Arc<AtomicU64>);
struct Nop;

impl CounterFn for Nop {
    fn increment(&self, _: u64) {}
    fn absolute(&self, _: u64) {}
}
impl HistogramFn for Nop {
    fn record(&self, _: f64) {}
}
impl GaugeFn for Nop {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, _: f64) {}
}
impl GaugeFn for Cell {
    fn increment(&self, v: f64) {
        self.0.fetch_add(v as u64, Ordering::SeqCst);
    }
    fn decrement(&self, v: f64) {
        self.0.fetch_sub(v as u64, Ordering::SeqCst);
    }
    fn set(&self, value: f64) {
        std::thread::yield_now();
        self.0.store(value as u64, Ordering::SeqCst);
    }
}

impl Recorder for InFlightGauge {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Nop))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        if key.name() == "torque_parallel_limiter_in_flight" {
            Gauge::from_arc(Arc::new(Cell(Arc::clone(&self.0))))
        } else {
            Gauge::from_arc(Arc::new(Nop))
        }
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Nop))
    }
}

#[test]
fn limiter_in_flight_gauge_returns_to_zero_under_concurrent_release() {
    let gauge = Arc::new(AtomicU64::new(0));
    metrics::set_global_recorder(InFlightGauge(Arc::clone(&gauge))).unwrap();
    let limiter = ConcurrencyLimiter::new(Fixed::new(64));
    const THREADS: usize = 2;
    const ROUNDS: usize = 20_000;
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (limiter, barrier) = (limiter.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    barrier.wait();
                    limiter.try_acquire().unwrap().success();
                    barrier.wait();
                }
            })
        })
        .collect();
    let mut wrong = 0;
    for _ in 0..ROUNDS {
        barrier.wait();
        barrier.wait();
        assert_eq!(limiter.stats().in_flight, 0);
        if gauge.load(Ordering::SeqCst) != 0 {
            wrong += 1;
        }
    }
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(wrong, 0, "rounds ending with a stale in-flight gauge");
}
