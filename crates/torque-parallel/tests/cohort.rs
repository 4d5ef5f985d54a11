//! `Adaptive` closes a window when every request in flight at its cut-off
//! has reported — not after a multiple of the window's own mean, which
//! dropped the slow requests of a bimodal cohort (cache hits beside backend
//! calls) and collapsed the limit to 1 — and a request that ends without a
//! sample (`Token::ignore`, a dropped token) counts as reported.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use torque_parallel::limit::{
    Adaptive, Algorithm, ConcurrencyLimiter, Limiter, MockClock, Sample, Token, Windowed,
};

/// Runs the start-up probe (limit 4) up to its cut-off: the first four
/// requests take 34 ms (so the window has seen latencies that long), then
/// requests of 4 ms, one admitted every millisecond, until the window has
/// its 32 samples (mean 6.8 ms). Returns the three requests still in
/// flight at the cut, oldest first, and one admitted just after it.
fn probe_to_its_cut<A: Algorithm>(
    limiter: &ConcurrencyLimiter<A, MockClock>,
    clock: &MockClock,
) -> (Vec<Token>, Token) {
    let ms = Duration::from_millis;
    let mut in_flight = VecDeque::new();
    for _ in 0..4 {
        in_flight.push_back(limiter.try_acquire().expect("limit 4"));
        clock.advance(ms(1));
    }
    clock.advance(ms(30));
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
    // The last of the cohort is slow; requests admitted after the cut do
    // not close the window without it (for up to `max_window`, 1 s).
    clock.advance(Duration::from_millis(40));
    after_cut.success();
    for _ in 0..5 {
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

/// Runs the probe to its cut; two of the cohort succeed, the last is
/// ignored, and a request admitted after the cut completes past four mean
/// latencies. Returns the limit then: 8 once the window has closed.
fn limit_after_the_cohort_ends_with_an_ignore<A: Algorithm>(
    limiter: &ConcurrencyLimiter<A, MockClock>,
    clock: &MockClock,
) -> usize {
    let (mut cohort, after_cut) = probe_to_its_cut(limiter, clock);
    cohort.remove(0).success();
    cohort.remove(0).success();
    cohort.remove(0).ignore();
    clock.advance(Duration::from_millis(40));
    after_cut.success();
    limiter.limit()
}

#[test]
fn an_ignored_request_of_the_cohort_counts_as_reported() {
    let (limiter, clock) = limiter();
    assert_eq!(
        limit_after_the_cohort_ends_with_an_ignore(&limiter, &clock),
        8,
        "the window still waits for an ignored request"
    );
}

#[test]
fn a_dropped_token_of_the_cohort_counts_as_reported() {
    let (limiter, clock) = limiter();
    let (cohort, after_cut) = probe_to_its_cut(&limiter, &clock);
    drop(cohort);
    clock.advance(Duration::from_millis(40));
    after_cut.success();
    assert_eq!(
        limiter.limit(),
        8,
        "the window still waits for a dropped token"
    );
}

/// `Windowed` forwarded `rejected` to its inner algorithm but not
/// `ignored`: an `Adaptive` inside it never heard of a request of its
/// cohort that was ignored or dropped, and held every such window until
/// `max_window` (1 s) instead of closing it once the cohort had reported.
#[test]
fn regression_windowed_adaptive_hears_of_an_ignored_request_of_the_cohort() {
    let clock = MockClock::new();
    // A window of one sample: every sample goes straight through, so the
    // inner algorithm must behave exactly as it does alone.
    let windowed = Windowed::builder(Adaptive::default())
        .min_samples(1)
        .min_window(Duration::ZERO)
        .build()
        .unwrap();
    let limiter = ConcurrencyLimiter::with_clock(windowed, clock.clone());
    assert_eq!(limiter.limit(), 4, "the start-up probe runs at 4");
    assert_eq!(
        limit_after_the_cohort_ends_with_an_ignore(&limiter, &clock),
        8,
        "the inner Adaptive still waits for an ignored request"
    );
}

/// What an inner algorithm hears of each admission: the admission numbers
/// of its samples, and of the requests it was told ended without one.
#[derive(Debug, Default, Clone)]
struct Heard(Arc<Mutex<Vec<u64>>>);

impl Algorithm for Heard {
    fn initial_limit(&self) -> usize {
        16
    }
    fn update(&mut self, sample: &Sample) -> usize {
        self.0.lock().unwrap().push(sample.admission);
        16
    }
    fn ignored(&mut self, admission: u64) {
        self.0.lock().unwrap().push(admission);
    }
}

/// `Windowed` feeds its inner algorithm one sample per window, and the
/// admissions it averaged into it were never reported to it at all: an
/// inner `Adaptive` waiting for its cohort waited for requests that had
/// long ended, and held every window until `max_window`. Each admission
/// must end once for the inner algorithm, with a sample or without one.
#[test]
fn regression_windowed_reports_every_admission_to_its_inner_algorithm() {
    let clock = MockClock::new();
    let heard = Heard::default();
    let windowed = Windowed::builder(heard.clone())
        .min_samples(3)
        .min_window(Duration::ZERO)
        .build()
        .unwrap();
    let limiter = ConcurrencyLimiter::with_clock(windowed, clock.clone());
    let mut tokens: Vec<Token> = (0..8).map(|_| limiter.try_acquire().unwrap()).collect();
    clock.advance(Duration::from_millis(1));
    tokens.remove(0).ignore();
    drop(tokens.remove(0));
    for token in tokens {
        token.success();
    }
    let mut heard = heard.0.lock().unwrap().clone();
    heard.sort_unstable();
    assert_eq!(heard, (0..8).collect::<Vec<u64>>());
}

/// A closed loop of 10 ms requests on a mock clock, with `held` permits
/// taken first and never returned (streams): the limit after `seconds`.
fn closed_loop_beside_held_permits(held: usize, seconds: u64) -> usize {
    let (limiter, clock) = limiter();
    let _held: Vec<Token> = (0..held)
        .map(|_| limiter.try_acquire().expect("below the start-up limit"))
        .collect();
    let mut in_flight: VecDeque<(Token, u64)> = VecDeque::new();
    for now_ms in 0..seconds * 1000 {
        while in_flight.front().is_some_and(|(_, at)| now_ms - at >= 10) {
            in_flight.pop_front().expect("checked").0.success();
        }
        while let Ok(token) = limiter.try_acquire() {
            in_flight.push_back((token, now_ms));
        }
        clock.advance(Duration::from_millis(1));
    }
    limiter.limit()
}

/// Windows wait for the requests in flight at their cut; one that never
/// reports held every window for `max_window` (1 s), so slow start took
/// a second a step.
#[test]
fn a_permit_held_for_ever_does_not_hold_every_window() {
    let free = closed_loop_beside_held_permits(0, 2);
    let beside = closed_loop_beside_held_permits(1, 2);
    assert!(free >= 256, "no backend limit: {free} after 2 s");
    assert!(
        beside >= 256,
        "one permit held for ever: {beside} after 2 s (without it {free})"
    );
}
