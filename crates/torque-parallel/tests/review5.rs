//! Defects found by the fifth review (the limiters of `limit` and their
//! errors), each pinned by a test named for it.

mod common;

use std::future::Future;
use std::time::Duration;

use common::wait_until_async;
use torque_parallel::limit::{ConcurrencyLimiter, Fixed, Limiter};

/// A `try_acquire` refused behind a waiter that was woken for the free
/// permit but has not run yet said "concurrency limit reached: 0 in
/// flight, limit 1": nothing in its message explained the refusal (the
/// permit is promised to the waiter; `try_acquire` does not jump the
/// queue), and the error did not carry the waiting count.
#[tokio::test(start_paused = true)]
async fn regression_a_refusal_behind_waiters_says_they_are_waiting() {
    let limiter = ConcurrencyLimiter::new(Fixed::new(1));
    let held = limiter.try_acquire().unwrap();
    let waiter = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.acquire().await }
    });
    wait_until_async(Duration::from_secs(5), || limiter.stats().waiting == 1).await;
    held.success(); // wakes the waiter, which has not run yet
    let rejected = limiter.try_acquire().unwrap_err();
    assert_eq!(
        (rejected.limit, rejected.in_flight, rejected.waiting),
        (1, 0, 1)
    );
    let message = rejected.to_string();
    assert!(message.contains("1 waiting"), "{message}");
    waiter.await.unwrap().success();
    assert_eq!(limiter.stats().in_flight, 0);
}

/// `Gradient2`'s `rtt_tolerance` and `queue_size` are refused when
/// infinite, but the error read "rtt_tolerance = inf is out of range: at
/// least 1.0" (and "queue_size = inf ...: 0 or more"): infinity is both,
/// so the message contradicted itself instead of saying what to change.
#[test]
fn regression_an_infinite_knob_is_refused_as_not_finite() {
    use torque_parallel::limit::{BuildError, Gradient2};
    for error in [
        Gradient2::builder().rtt_tolerance(f64::INFINITY).build(),
        Gradient2::builder().queue_size(f64::INFINITY).build(),
    ]
    .map(Result::unwrap_err)
    {
        assert!(
            matches!(error, BuildError::OutOfRange { value, .. } if value.is_infinite()),
            "{error}"
        );
        assert!(error.to_string().contains("finite"), "{error}");
    }
}

/// A clock that panics while `failing` is set: a user's clock with a bug
/// (or tokio's, read while its thread's locals are being destroyed).
#[derive(Debug, Clone, Default)]
struct FailingClock {
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FailingClock {
    fn fail(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::Relaxed);
    }
}

impl torque_parallel::limit::Clock for FailingClock {
    fn now(&self) -> std::time::Instant {
        assert!(
            !self.failing.load(std::sync::atomic::Ordering::Relaxed),
            "the clock's bug"
        );
        std::time::Instant::now()
    }
}

/// The limiter survives a panicking algorithm with its permits intact, but
/// not a panicking clock: read when a token was stamped (after its permit
/// was counted) or completed (before the permit was given back), the
/// panic lost the permit for good, and a `Fixed(1)` limiter admitted
/// nothing ever again. A token dropped without a verdict read the clock
/// too, though an ignored request feeds no latency anywhere.
#[test]
fn regression_a_panicking_clock_does_not_leak_permits() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let clock = FailingClock::default();
    let limiter = ConcurrencyLimiter::with_clock(Fixed::new(1), clock.clone());

    // Completing a token measures its latency.
    let token = limiter.try_acquire().unwrap();
    clock.fail(true);
    assert!(catch_unwind(AssertUnwindSafe(|| token.success())).is_err());
    assert_eq!(limiter.stats().in_flight, 0, "success leaked its permit");

    // Handing a token out stamps it.
    assert!(catch_unwind(AssertUnwindSafe(|| limiter.try_acquire())).is_err());
    assert_eq!(limiter.stats().in_flight, 0, "try_acquire leaked a permit");
    let acquire = catch_unwind(AssertUnwindSafe(|| {
        let waker = std::task::Waker::noop();
        let mut acquire = std::pin::pin!(limiter.acquire());
        let _ = acquire
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
    }));
    assert!(acquire.is_err());
    assert_eq!(limiter.stats().in_flight, 0, "acquire leaked a permit");

    // An ignored token has no latency to measure.
    clock.fail(false);
    let token = limiter.try_acquire().unwrap();
    clock.fail(true);
    token.ignore();
    assert_eq!(limiter.stats().in_flight, 0);
    clock.fail(false);
    let token = limiter.try_acquire().unwrap();
    clock.fail(true);
    drop(token);
    assert_eq!(limiter.stats().in_flight, 0);

    clock.fail(false);
    limiter.try_acquire().unwrap().success();
    assert_eq!(limiter.stats().in_flight, 0);
}
