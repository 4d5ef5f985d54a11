//! Defects found by the fifth review (the limiters of `limit` and their
//! errors), each pinned by a test named for it.

mod common;

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
