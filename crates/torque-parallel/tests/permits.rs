//! Permit bookkeeping of `ConcurrencyLimiter`: tokens never leak, in-flight
//! never exceeds the limit, async acquire is fair and cancel safe.

use std::time::Duration;

use proptest::prelude::*;
use torque_parallel::limit::{
    Adaptive, Aimd, Algorithm, ConcurrencyLimiter, Fixed, Gradient2, Limiter, MockClock, Outcome,
    Vegas, Windowed,
};

fn algorithms() -> Vec<Box<dyn Algorithm>> {
    vec![
        Box::new(Fixed::new(3)),
        Box::new(Aimd::builder().initial_limit(3).build().unwrap()),
        Box::new(Vegas::builder().initial_limit(3).build().unwrap()),
        Box::new(Gradient2::builder().initial_limit(3).build().unwrap()),
        Box::new(
            Windowed::builder(Vegas::builder().initial_limit(3).build().unwrap())
                .build()
                .unwrap(),
        ),
        Box::new(Adaptive::builder().initial_limit(3).build().unwrap()),
    ]
}

#[test]
fn try_acquire_rejects_at_the_limit_and_counts_it() {
    let limiter = ConcurrencyLimiter::new(Fixed::new(2));
    let a = limiter.try_acquire().unwrap();
    let _b = limiter.try_acquire().unwrap();
    let rejected = limiter.try_acquire().unwrap_err();
    assert_eq!((rejected.limit, rejected.in_flight), (2, 2));
    assert_eq!(limiter.stats().rejected, 1);
    a.success();
    assert!(limiter.try_acquire().is_ok());
}

/// Counts what the limiter tells its algorithm.
#[derive(Debug, Default)]
struct Refusals(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Algorithm for Refusals {
    fn initial_limit(&self) -> usize {
        1
    }
    fn update(&mut self, _: &torque_parallel::limit::Sample) -> usize {
        1
    }
    fn rejected(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn the_algorithm_hears_of_each_refusal() {
    let count = std::sync::Arc::default();
    let limiter = ConcurrencyLimiter::new(Refusals(std::sync::Arc::clone(&count)));
    let token = limiter.try_acquire().unwrap();
    for _ in 0..3 {
        assert!(limiter.try_acquire().is_err());
    }
    token.success();
    let _token = limiter.try_acquire().unwrap();
    assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(limiter.stats().rejected, 3);
}

#[test]
fn tokens_dropped_without_an_outcome_return_their_permit() {
    for algorithm in algorithms() {
        let limiter = ConcurrencyLimiter::with_clock(algorithm, MockClock::new());
        for _ in 0..1000 {
            let token = limiter
                .try_acquire()
                .expect("a dropped token freed its permit");
            drop(token);
        }
        assert_eq!(limiter.stats().in_flight, 0);
        // A panicking caller drops its token while unwinding.
        let l = limiter.clone();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _token = l.try_acquire().unwrap();
            panic!("caller failed");
        }));
        assert_eq!(limiter.stats().in_flight, 0);
    }
}

#[test]
fn the_limit_never_goes_below_one() {
    let clock = MockClock::new();
    for algorithm in algorithms() {
        let limiter = ConcurrencyLimiter::with_clock(algorithm, clock.clone());
        for i in 0..5000u64 {
            let token = limiter
                .try_acquire()
                .expect("at least one permit is always free");
            // Ever slower, and often overloaded.
            clock.advance(Duration::from_millis(1 + i));
            if i % 3 == 0 {
                token.overload();
            } else {
                token.success();
            }
            assert!(limiter.stats().limit >= 1, "{limiter:?}");
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Complete {
        index: usize,
        outcome: u8,
        after_ms: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Acquire),
        (any::<usize>(), 0u8..4, 0u16..200).prop_map(|(index, outcome, after_ms)| Op::Complete {
            index,
            outcome,
            after_ms
        }),
    ]
}

/// What the model expects of `stats()`: the outcomes counted, the span of
/// the timed requests and the successful latencies.
#[derive(Default)]
struct Reported {
    succeeded: u64,
    overloaded: u64,
    ignored: u64,
    /// Earliest start and latest end (ms on the mock clock) of the requests
    /// completed with success or overload.
    span: Option<(u64, u64)>,
    latencies: Vec<u64>,
}

impl Reported {
    fn check(&self, stats: &torque_parallel::limit::Stats) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            (stats.succeeded, stats.overloaded, stats.ignored),
            (self.succeeded, self.overloaded, self.ignored)
        );
        let busy = self.span.map_or(0, |(first, last)| last - first);
        prop_assert_eq!(stats.busy, Duration::from_millis(busy));
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let reported = [stats.latency_p50, stats.latency_p90, stats.latency_p99];
        for (p, got) in [50u64, 90, 99].into_iter().zip(reported) {
            if sorted.is_empty() {
                prop_assert_eq!(got, None);
                continue;
            }
            // The ceil(p% × n)-th smallest latency.
            let rank = (sorted.len() as u64 * p).div_ceil(100).max(1) as usize;
            let exact = Duration::from_millis(sorted[rank - 1]);
            let got = got.expect("a percentile once something succeeded");
            // Never below the true percentile, at most an eighth above.
            prop_assert!(
                got >= exact && got * 8 <= exact * 9,
                "p{}: {:?} for {:?}",
                p,
                got,
                exact
            );
        }
        Ok(())
    }
}

proptest! {
    /// Model: the live tokens and when each started. In flight always
    /// equals their number, no permit is handed out at or above the limit,
    /// and `stats()` reports every outcome, the busy span and the
    /// successful latencies' percentiles.
    #[test]
    fn in_flight_never_exceeds_the_limit(which in 0usize..6, ops in proptest::collection::vec(op(), 1..400)) {
        let clock = MockClock::new();
        let algorithm = algorithms().swap_remove(which);
        let limiter = ConcurrencyLimiter::with_clock(algorithm, clock.clone());
        let mut live = Vec::new();
        let mut now_ms = 0u64;
        let mut model = Reported::default();
        for op in ops {
            match op {
                Op::Acquire => {
                    let before = limiter.stats();
                    match limiter.try_acquire() {
                        Ok(token) => {
                            prop_assert!(before.in_flight < before.limit);
                            live.push((token, now_ms));
                        }
                        Err(rejected) => prop_assert!(rejected.in_flight >= rejected.limit),
                    }
                }
                Op::Complete { index, outcome, after_ms } if !live.is_empty() => {
                    clock.advance(Duration::from_millis(u64::from(after_ms)));
                    now_ms += u64::from(after_ms);
                    let (token, started) = live.swap_remove(index % live.len());
                    if outcome < 2 {
                        model.span = Some(model.span.map_or((started, now_ms), |(first, last)| {
                            (first.min(started), last.max(now_ms))
                        }));
                    }
                    match outcome {
                        0 => {
                            token.success();
                            model.succeeded += 1;
                            model.latencies.push(now_ms - started);
                        }
                        1 => {
                            token.overload();
                            model.overloaded += 1;
                        }
                        2 => {
                            token.complete(Outcome::Ignored);
                            model.ignored += 1;
                        }
                        _ => {
                            drop(token);
                            model.ignored += 1;
                        }
                    }
                }
                Op::Complete { .. } => {}
            }
            let stats = limiter.stats();
            prop_assert_eq!(stats.in_flight, live.len());
            prop_assert!(stats.limit >= 1);
            model.check(&stats)?;
        }
        model.ignored += live.len() as u64;
        live.clear();
        let stats = limiter.stats();
        prop_assert_eq!(stats.in_flight, 0);
        model.check(&stats)?;
        prop_assert_eq!(stats.completed(), model.succeeded + model.overloaded + model.ignored);
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_order() {
    let limiter = ConcurrencyLimiter::new(Fixed::new(1));
    let held = limiter.try_acquire().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let limiter = limiter.clone();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let token = limiter.acquire().await;
            tx.send(i).unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            token.success();
        }));
        tokio::task::yield_now().await;
    }
    assert_eq!(limiter.stats().waiting, 5);
    assert!(
        limiter.try_acquire().is_err(),
        "try_acquire does not jump the queue"
    );
    held.success();
    for task in tasks {
        task.await.unwrap();
    }
    let order: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(order, [0, 1, 2, 3, 4]);
    assert_eq!(limiter.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn acquire_is_cancel_safe() {
    let limiter = ConcurrencyLimiter::new(Fixed::new(1));
    let held = limiter.try_acquire().unwrap();

    // A waiter that gives up (a timeout) leaves the queue.
    let gave_up = tokio::time::timeout(Duration::from_millis(10), limiter.acquire()).await;
    assert!(gave_up.is_err());
    assert_eq!(limiter.stats().waiting, 0);

    // A waiter woken for the permit but cancelled before it ran passes the
    // permit on to the next one.
    let first = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire().await.success() })
    };
    tokio::task::yield_now().await;
    let second = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire().await.success() })
    };
    tokio::task::yield_now().await;
    assert_eq!(limiter.stats().waiting, 2);
    held.success(); // wakes `first`...
    first.abort(); // ...which is dropped before it polls.
    tokio::time::timeout(Duration::from_secs(1), second)
        .await
        .expect("the permit reached the second waiter")
        .unwrap();
    assert!(first.await.unwrap_err().is_cancelled());
    let stats = limiter.stats();
    assert_eq!((stats.in_flight, stats.waiting), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_raised_limit_wakes_waiters() {
    // Aimd grows by one per success at half use or more.
    let limiter = ConcurrencyLimiter::new(Aimd::builder().initial_limit(1).build().unwrap());
    let held = limiter.try_acquire().unwrap();
    let waiter = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire().await })
    };
    tokio::task::yield_now().await;
    held.success();
    let token = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(limiter.stats().limit, 2);
    token.success();
}

#[test]
fn regression_zero_latencies_and_a_never_probe_interval_do_not_panic() {
    // A mock clock that never moves gives zero latencies; an interval of
    // Duration::MAX means "never probe" and must not overflow an Instant.
    let adaptive = Adaptive::builder()
        .probe_interval(Duration::MAX)
        .max_window(Duration::MAX)
        .build()
        .unwrap();
    let limiter = ConcurrencyLimiter::with_clock(adaptive, MockClock::new());
    for _ in 0..10_000 {
        limiter.try_acquire().unwrap().success();
    }
    assert!(limiter.stats().limit >= 1);
}

/// An algorithm that panics on every sample (a bug in user code).
#[derive(Debug)]
struct Panicking;

impl Algorithm for Panicking {
    fn initial_limit(&self) -> usize {
        1
    }
    fn update(&mut self, _: &torque_parallel::limit::Sample) -> usize {
        panic!("the algorithm's bug");
    }
}

#[tokio::test(start_paused = true)]
async fn regression_a_panicking_algorithm_does_not_strand_the_waiters() {
    let limiter = ConcurrencyLimiter::new(Panicking);
    let held = limiter.try_acquire().unwrap();
    let waiter = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire().await })
    };
    tokio::task::yield_now().await;
    assert_eq!(limiter.stats().waiting, 1);
    // The panic reaches the caller that completed the token...
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| held.success()));
    assert!(panicked.is_err());
    // ...and the permit it returned still reaches the waiter.
    let token = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("the waiter was woken")
        .unwrap();
    assert_eq!(limiter.stats().in_flight, 1);
    token.ignore();
    assert_eq!(limiter.stats().in_flight, 0);
}

/// What a step of [`the_wait_line_keeps_arrival_order_through_cancels_and_polls`] does.
#[derive(Debug, Clone)]
enum LineOp {
    /// A new `acquire`, polled once.
    Arrive,
    /// The queued waiter at this index (modulo the line's length) gives up.
    Cancel(usize),
    /// A held token at this index (modulo their number) completes.
    Release(usize),
    /// Every queued waiter is polled once more, newest first or oldest
    /// first (a `select!` or `timeout` re-polls on any wake-up).
    PollAll { newest_first: bool },
}

fn line_op() -> impl Strategy<Value = LineOp> {
    prop_oneof![
        3 => Just(LineOp::Arrive),
        2 => any::<usize>().prop_map(LineOp::Cancel),
        2 => any::<usize>().prop_map(LineOp::Release),
        2 => any::<bool>().prop_map(|newest_first| LineOp::PollAll { newest_first }),
    ]
}

proptest! {
    /// The wait line against a model: a waiter is admitted when polled iff
    /// the permits in flight plus the live waiters that arrived before it
    /// are under the limit, whatever order waiters left the line in and
    /// were polled in; the limiter's counts match the model's.
    #[test]
    fn the_wait_line_keeps_arrival_order_through_cancels_and_polls(
        limit in 1usize..4,
        ops in proptest::collection::vec(line_op(), 1..120),
    ) {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};

        let limiter = ConcurrencyLimiter::new(Fixed::new(limit));
        let mut cx = Context::from_waker(Waker::noop());
        let mut tokens = Vec::new();
        // Queued waiters, oldest first.
        let mut line: Vec<std::pin::Pin<Box<_>>> = Vec::new();
        for op in ops {
            match op {
                LineOp::Arrive => {
                    let mut waiter = Box::pin(limiter.acquire_owned());
                    let admit = tokens.len() + line.len() < limit;
                    match waiter.as_mut().poll(&mut cx) {
                        Poll::Ready(token) => {
                            prop_assert!(admit, "admitted past {} in flight and {} waiting", tokens.len(), line.len());
                            tokens.push(token);
                        }
                        Poll::Pending => {
                            prop_assert!(!admit, "refused with room");
                            line.push(waiter);
                        }
                    }
                }
                LineOp::Cancel(i) if !line.is_empty() => {
                    let i = i % line.len();
                    drop(line.remove(i));
                }
                LineOp::Release(i) if !tokens.is_empty() => {
                    let i = i % tokens.len();
                    tokens.swap_remove(i).success();
                }
                LineOp::PollAll { newest_first } => {
                    let order: Vec<usize> = if newest_first {
                        (0..line.len()).rev().collect()
                    } else {
                        (0..line.len()).collect()
                    };
                    let mut admitted = Vec::new();
                    for i in order {
                        // Live waiters ahead of this one.
                        let ahead = i - admitted.iter().filter(|&&j| j < i).count();
                        let admit = tokens.len() + ahead < limit;
                        match line[i].as_mut().poll(&mut cx) {
                            Poll::Ready(token) => {
                                prop_assert!(admit, "waiter {i} admitted with {ahead} ahead");
                                tokens.push(token);
                                admitted.push(i);
                            }
                            Poll::Pending => prop_assert!(!admit, "waiter {i} refused with {ahead} ahead"),
                        }
                    }
                    admitted.sort_unstable();
                    for i in admitted.into_iter().rev() {
                        // An admitted waiter's future is done; dropping it
                        // gives nothing back.
                        drop(line.remove(i));
                    }
                }
                _ => {}
            }
            let stats = limiter.stats();
            prop_assert_eq!((stats.in_flight, stats.waiting), (tokens.len(), line.len()));
        }
    }
}
