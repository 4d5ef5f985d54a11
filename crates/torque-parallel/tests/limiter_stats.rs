//! The limiter's `stats()`: outcome counts, busy span and latency
//! percentiles at their edges. Regression tests, each named for the bug.

use std::time::Duration;

use torque_parallel::limit::{ConcurrencyLimiter, Fixed, Limiter, MockClock};

/// A request that held its permit for longer than 2^48 ns (about 78 h: a
/// long-lived stream, a connection) was counted in the histogram's last
/// bucket and reported as 78 h, below its true latency, although the docs
/// promise a percentile never below the true value and at most 12.5 %
/// above it. The histogram now spans every latency a `u64` of nanoseconds
/// holds (about 584 years).
#[test]
fn regression_latencies_over_78_hours_are_not_reported_below_their_value() {
    for hours in [79u64, 100, 1_000, 24 * 365 * 100] {
        let clock = MockClock::new();
        let limiter = ConcurrencyLimiter::with_clock(Fixed::new(4), clock.clone());
        let token = limiter.try_acquire().expect("below the limit");
        let held = Duration::from_secs(hours * 3600);
        clock.advance(held);
        token.success();
        let s = limiter.stats();
        for p in [s.latency_p50, s.latency_p90, s.latency_p99] {
            let p = p.expect("one success");
            assert!(
                p >= held && p.as_nanos() * 8 <= held.as_nanos() * 9,
                "{hours} h reported as {p:?}"
            );
        }
        assert_eq!((s.succeeded, s.busy), (1, held));
    }
}

/// A clock that panics on demand, for the permits it cannot time.
#[derive(Debug, Clone, Default)]
struct FailingClock {
    inner: MockClock,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl torque_parallel::limit::Clock for FailingClock {
    fn now(&self) -> std::time::Instant {
        assert!(
            !self.fail.load(std::sync::atomic::Ordering::SeqCst),
            "the clock failed"
        );
        self.inner.now()
    }
}

/// What the docs of `Stats::ignored` and `Stats::throughput` say: a
/// permit the clock panicked on comes back as ignored, every permit is
/// counted once, and one timed request is enough for a throughput.
#[test]
fn permits_the_clock_panicked_on_count_as_ignored_and_one_request_has_a_throughput() {
    let clock = FailingClock::default();
    let limiter = ConcurrencyLimiter::with_clock(Fixed::new(4), clock.clone());
    let timed = limiter.try_acquire().expect("below the limit");
    clock.inner.advance(Duration::from_millis(100));
    timed.success();
    let s = limiter.stats();
    assert_eq!((s.succeeded, s.busy), (1, Duration::from_millis(100)));
    assert!((s.throughput() - 10.0).abs() < 1e-9, "{}", s.throughput());

    let ended_badly = limiter.try_acquire().expect("below the limit");
    clock.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let at_end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ended_badly.overload()));
    assert!(at_end.is_err());
    let at_start = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = limiter.try_acquire();
    }));
    assert!(at_start.is_err());
    let s = limiter.stats();
    assert_eq!(
        (
            s.succeeded,
            s.overloaded,
            s.ignored,
            s.in_flight,
            s.completed()
        ),
        (1, 0, 2, 0, 3)
    );
}
