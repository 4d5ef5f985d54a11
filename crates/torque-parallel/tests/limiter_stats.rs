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
