//! `Adaptive` closes a window when every request in flight at its cut-off
//! has reported — not after a multiple of the window's own mean, which
//! dropped the slow requests of a bimodal cohort (cache hits beside backend
//! calls) and collapsed the limit to 1 — and a request that ends without a
//! sample (`Token::ignore`, a dropped token) counts as reported.

use std::collections::VecDeque;
use std::time::Duration;

use torque_parallel::limit::{Adaptive, ConcurrencyLimiter, Limiter, MockClock, Token};

/// Runs the start-up probe (limit 4) up to its cut-off: requests of 4 ms,
/// one admitted every millisecond, until the window has its 32 samples.
/// Returns the three requests still in flight at the cut, oldest first,
/// and one admitted just after it.
fn probe_to_its_cut(
    limiter: &ConcurrencyLimiter<Adaptive, MockClock>,
    clock: &MockClock,
) -> (Vec<Token>, Token) {
    let ms = Duration::from_millis;
    let mut in_flight = VecDeque::new();
    for _ in 0..4 {
        in_flight.push_back(limiter.try_acquire().expect("limit 4"));
        clock.advance(ms(1));
    }
    // The first completion opens the window (it saw the limit before it);
    // the next 32 fill it.
    for _ in 0..33 {
        in_flight.pop_front().expect("four in flight").success();
        in_flight.push_back(limiter.try_acquire().expect("one was returned"));
        clock.advance(ms(1));
    }
    let after_cut = in_flight.pop_back().expect("just admitted");
    (in_flight.into(), after_cut)
}

fn limiter() -> (ConcurrencyLimiter<Adaptive, MockClock>, MockClock) {
    let clock = MockClock::new();
    let limiter = ConcurrencyLimiter::with_clock(Adaptive::default(), clock.clone());
    assert_eq!(limiter.limit(), 4, "the start-up probe runs at 4");
    (limiter, clock)
}

#[test]
fn a_window_waits_for_every_request_in_flight_at_its_cut() {
    let (limiter, clock) = limiter();
    let (mut cohort, after_cut) = probe_to_its_cut(&limiter, &clock);
    assert_eq!(cohort.len(), 3);
    cohort.remove(0).success();
    cohort.remove(0).success();
    // The last of the cohort is slow; requests admitted after the cut,
    // however many and however late, do not close the window without it.
    clock.advance(Duration::from_millis(100));
    after_cut.success();
    for _ in 0..10 {
        limiter.try_acquire().expect("below the limit").success();
        clock.advance(Duration::from_millis(10));
    }
    assert_eq!(
        limiter.limit(),
        4,
        "the window closed without its straggler"
    );
    // It reports: the window closes (the probe doubles as the first
    // slow-start window, so the limit doubles).
    cohort.remove(0).success();
    limiter.try_acquire().expect("below the limit").success();
    assert_eq!(limiter.limit(), 8);
}

#[test]
fn an_ignored_request_of_the_cohort_counts_as_reported() {
    let (limiter, clock) = limiter();
    let (mut cohort, after_cut) = probe_to_its_cut(&limiter, &clock);
    cohort.remove(0).success();
    cohort.remove(0).success();
    cohort.remove(0).ignore();
    clock.advance(Duration::from_millis(20));
    after_cut.success();
    assert_eq!(
        limiter.limit(),
        8,
        "the window still waits for an ignored request"
    );
}

#[test]
fn a_dropped_token_of_the_cohort_counts_as_reported() {
    let (limiter, clock) = limiter();
    let (cohort, after_cut) = probe_to_its_cut(&limiter, &clock);
    drop(cohort);
    clock.advance(Duration::from_millis(20));
    after_cut.success();
    assert_eq!(
        limiter.limit(),
        8,
        "the window still waits for a dropped token"
    );
}
