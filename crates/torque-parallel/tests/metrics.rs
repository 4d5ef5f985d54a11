//! The `metrics` feature: limiter events through the facade.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use torque_parallel::limit::{ConcurrencyLimiter, Fixed, Limiter, MockClock};

/// Keeps the last value of every counter, gauge and histogram by name.
#[derive(Default)]
struct Last {
    values: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

struct Cell(Arc<AtomicU64>);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.0.fetch_add(value as u64, Ordering::Relaxed);
    }
    fn decrement(&self, value: f64) {
        self.0.fetch_sub(value as u64, Ordering::Relaxed);
    }
    fn set(&self, value: f64) {
        self.0.store(value as u64, Ordering::Relaxed);
    }
}

impl HistogramFn for Cell {
    /// Keeps the last value, in milliseconds.
    fn record(&self, value: f64) {
        self.0
            .store((value * 1e3).round() as u64, Ordering::Relaxed);
    }
}

impl Last {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let cell = Arc::clone(
            self.values
                .lock()
                .unwrap()
                .entry(key.name().to_string())
                .or_default(),
        );
        Arc::new(Cell(cell))
    }

    fn get(&self, name: &str) -> u64 {
        self.values
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl Recorder for Last {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

#[test]
fn facade_sees_what_stats_sees() {
    let recorder = Last::default();
    metrics::with_local_recorder(&recorder, || {
        let clock = MockClock::new();
        let limiter = ConcurrencyLimiter::with_clock(Fixed::new(2), clock.clone());
        let a = limiter.try_acquire().unwrap();
        let b = limiter.try_acquire().unwrap();
        assert!(limiter.try_acquire().is_err());
        assert_eq!(recorder.get("torque_parallel_limiter_in_flight"), 2);
        clock.advance(Duration::from_millis(25));
        a.success();
        b.overload();
        drop(limiter.try_acquire());

        assert_eq!(recorder.get("torque_parallel_limiter_acquired_total"), 3);
        assert_eq!(recorder.get("torque_parallel_limiter_rejected_total"), 1);
        assert_eq!(recorder.get("torque_parallel_limiter_overloads_total"), 1);
        assert_eq!(recorder.get("torque_parallel_limiter_ignored_total"), 1);
        assert_eq!(recorder.get("torque_parallel_limiter_latency_seconds"), 25);
        assert_eq!(recorder.get("torque_parallel_limiter_limit"), 2);
        assert_eq!(recorder.get("torque_parallel_limiter_in_flight"), 0);
        assert_eq!(limiter.stats().rejected, 1);
    });
}

#[cfg(feature = "tokio")]
#[test]
fn async_batches_publish_io_metrics() {
    let recorder = Last::default();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let p = torque_parallel::Processor::builder()
                .async_limit(4)
                .build()
                .unwrap();
            let out = p
                .async_io()
                .timeout(Duration::from_millis(50))
                .try_map(0..10u64, |x| async move {
                    tokio::time::sleep(Duration::from_millis(10 * x)).await;
                    assert!(x != 2, "two");
                    if x == 3 { Err("three") } else { Ok(x) }
                })
                .await;
            assert_eq!(out.len(), 10);
            let s = p.stats().io;
            assert_eq!(recorder.get("torque_parallel_io_taken_total"), s.taken);
            assert_eq!(recorder.get("torque_parallel_io_started_total"), s.started);
            assert_eq!(
                recorder.get("torque_parallel_io_succeeded_total"),
                s.succeeded
            );
            assert_eq!(recorder.get("torque_parallel_io_failed_total"), s.failed);
            assert_eq!(
                recorder.get("torque_parallel_io_timed_out_total"),
                s.timed_out
            );
            assert_eq!(
                recorder.get("torque_parallel_io_panicked_total"),
                s.panicked
            );
            assert_eq!(
                (s.succeeded, s.failed, s.timed_out, s.panicked),
                (4, 1, 4, 1)
            );
            assert_eq!(recorder.get("torque_parallel_io_in_flight"), 0);
            assert_eq!(recorder.get("torque_parallel_io_awaiting_permit"), 0);
            assert!(recorder.get("torque_parallel_io_latency_seconds") > 0);
            // The limiter's own metrics see the same permits.
            assert_eq!(recorder.get("torque_parallel_limiter_acquired_total"), 10);
        });
    });
}

/// The limit gauge was set only when a token completed: a limiter whose
/// permits were all still held (or that had only refused) published no
/// limit, while `stats()` showed it.
#[test]
fn regression_the_limit_gauge_is_published_before_the_first_completion() {
    let recorder = Last::default();
    metrics::with_local_recorder(&recorder, || {
        let limiter = ConcurrencyLimiter::new(Fixed::new(3));
        let _held = limiter.try_acquire().unwrap();
        assert_eq!(
            recorder.get("torque_parallel_limiter_limit"),
            limiter.stats().limit as u64
        );
    });
}

/// A `Hybrid` batch that ends with nothing between its stages (here an
/// empty one) set the `queued` gauge to 0 as it ended, though another
/// batch of the processor still had items there: `queue(0, 0)` published
/// the 0 it started from instead of the count.
#[cfg(feature = "tokio")]
#[test]
fn regression_a_hybrid_batch_ending_empty_leaves_the_queued_gauge_true() {
    let recorder = Last::default();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = torque_parallel::Processor::builder()
                .async_limit(1)
                .cpu_threads(2)
                .hybrid_buffer(4)
                .build()
                .unwrap();
            // The busy batch's items wait on the gate: one in flight (the
            // limit), the next waiting for its permit, the rest queued.
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let g = Arc::clone(&gate);
            let busy = tokio::spawn(p.hybrid().map(
                0..8u32,
                |x| x,
                move |x| {
                    let g = Arc::clone(&g);
                    async move {
                        let _ = g.acquire().await;
                        x
                    }
                },
            ));
            common::wait_until_async(Duration::from_secs(10), || p.stats().io.queued >= 2).await;
            let queued = p.stats().io.queued as u64;
            assert_eq!(recorder.get("torque_parallel_io_queued"), queued);
            let none = p
                .hybrid()
                .map(Vec::<u32>::new(), |x| x, |x| async move { x })
                .await;
            assert!(none.is_empty());
            assert_eq!(p.stats().io.queued as u64, queued);
            assert_eq!(
                recorder.get("torque_parallel_io_queued"),
                queued,
                "the other batch's items are still queued"
            );
            gate.close();
            assert_eq!(busy.await.unwrap().len(), 8);
            assert_eq!(recorder.get("torque_parallel_io_queued"), 0);
        });
    });
}

/// The async gauges were set to the value of the processor that changed
/// last: with two processors busy, `torque_parallel_io_in_flight` showed
/// one processor's items (or 0 when the other went idle) instead of the
/// process's. Like the counters, they are process-wide sums now.
#[cfg(feature = "tokio")]
#[test]
fn regression_the_io_gauges_add_up_over_processors() {
    let recorder = Last::default();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let busy = torque_parallel::Processor::builder()
                .async_limit(8)
                .build()
                .unwrap();
            let brief = torque_parallel::Processor::builder()
                .async_limit(8)
                .build()
                .unwrap();
            let long = busy.async_io().map(0..3u64, |x| async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                x
            });
            let short = brief.async_io().map(0..2u64, |x| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                x
            });
            let observer = async {
                // Both running: 3 + 2 in flight.
                tokio::time::sleep(Duration::from_millis(5)).await;
                assert_eq!(recorder.get("torque_parallel_io_in_flight"), 5);
                // The brief batch is done; the busy one still runs 3.
                tokio::time::sleep(Duration::from_millis(10)).await;
                assert_eq!(recorder.get("torque_parallel_io_in_flight"), 3);
            };
            let (long, short, ()) = tokio::join!(long, short, observer);
            assert_eq!(long.len(), 3);
            assert_eq!(recorder.get("torque_parallel_io_in_flight"), 0);
            assert_eq!(short.len(), 2);
        });
    });
}
