//! The permit bookkeeping around an [`Algorithm`]: in-flight count, a fair
//! FIFO queue of async waiters, tokens that always give their permit back.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::latency::Histogram;

use super::{Algorithm, Clock, Outcome, Sample, SystemClock};

/// Something that hands out permits to call a backend.
///
/// [`ConcurrencyLimiter`] is the implementation; the trait lets code that
/// runs work under a limit (the processor's `Async` and `Hybrid`
/// strategies) be generic over it. The tower layer takes a
/// [`ConcurrencyLimiter`] itself: it needs its owned acquire future.
pub trait Limiter: Send + Sync {
    /// Takes a permit now, or fails with [`Rejected`] at the limit (for
    /// callers that shed load rather than queue it).
    ///
    /// # Errors
    /// [`Rejected`] when the limit is reached or earlier callers are waiting.
    fn try_acquire(&self) -> Result<Token, Rejected>;

    /// Waits for a permit. Waiters are served first come, first served.
    ///
    /// Cancel safe: dropping the future before it completes gives up its
    /// place in the queue and never loses a permit.
    fn acquire(&self) -> impl Future<Output = Token> + Send + '_;

    /// A snapshot of the current limit and counters.
    fn stats(&self) -> Stats;

    /// Identifies the permits this limiter hands out: equal for handles
    /// that share them (the clones of one [`ConcurrencyLimiter`]), so that
    /// an async batch awaited inside an item that runs on one of those
    /// permits knows it is nested under the same limit (the processor's
    /// `Async` strategy then lets the item's permit serve it). The default,
    /// the limiter's address, suits a limiter that is not such a handle.
    fn permits_id(&self) -> usize {
        (self as *const Self).cast::<()>() as usize
    }
}

/// A snapshot of a limiter's state, and what its tokens reported since it
/// was built.
///
/// Every token handed out is either still [`in_flight`](Stats::in_flight)
/// or counted once by how it ended, so once no request is running,
/// `succeeded + overloaded + ignored` is the number of permits ever given.
///
/// ```
/// use std::time::Duration;
/// use torque_parallel::limit::{ConcurrencyLimiter, Fixed, Limiter};
///
/// let limiter = ConcurrencyLimiter::new(Fixed::new(4));
/// limiter.try_acquire().expect("below the limit").success();
/// limiter.try_acquire().expect("below the limit").overload();
/// drop(limiter.try_acquire().expect("below the limit"));
/// let s = limiter.stats();
/// assert_eq!((s.succeeded, s.overloaded, s.ignored, s.in_flight), (1, 1, 1, 0));
/// assert_eq!(s.completed(), 3);
/// // The successful request's latency, within 12.5 % above.
/// assert!(s.latency_p99.is_some_and(|p| p < Duration::from_secs(1)));
/// ```
///
/// With the `serde` feature it is `Serialize` (fields by their names,
/// durations as `{ secs, nanos }`), for a statistics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// The current limit.
    pub limit: usize,
    /// Tokens handed out and not yet completed or dropped.
    pub in_flight: usize,
    /// Async callers waiting for a permit.
    pub waiting: usize,
    /// `try_acquire` calls refused since the limiter was built.
    pub rejected: u64,
    /// Tokens completed with [`Token::success`].
    pub succeeded: u64,
    /// Tokens completed with [`Token::overload`] (timeouts, overload
    /// errors).
    pub overloaded: u64,
    /// Tokens completed with [`Token::ignore`] or dropped without a
    /// verdict, and permits the limiter's clock panicked on (as the token
    /// was stamped, or as `success` or `overload` read the end): with no
    /// latency there is no sample, and the permit comes back as ignored.
    pub ignored: u64,
    /// From the earliest start to the latest end of the requests that
    /// completed with `success` or `overload` (the limiter's clock; ignored
    /// requests are not timed): the span
    /// [`throughput`](Stats::throughput) is measured over.
    pub busy: Duration,
    /// Median latency of the successful requests, from a histogram of all
    /// of them since the limiter was built: the largest latency of the
    /// histogram bucket that holds it, never below the true median and at
    /// most 12.5 % above it. `None` before the first success.
    pub latency_p50: Option<Duration>,
    /// 90th percentile latency of the successful requests (as
    /// [`latency_p50`](Stats::latency_p50)).
    pub latency_p90: Option<Duration>,
    /// 99th percentile latency of the successful requests (as
    /// [`latency_p50`](Stats::latency_p50)).
    pub latency_p99: Option<Duration>,
}

impl Stats {
    /// Tokens that ended, whatever their outcome.
    pub fn completed(&self) -> u64 {
        self.succeeded + self.overloaded + self.ignored
    }

    /// Requests completed with `success` or `overload` per second over
    /// [`busy`](Stats::busy) (0 while `busy` is zero: before a timed
    /// request has taken any time by the limiter's clock).
    pub fn throughput(&self) -> f64 {
        let secs = self.busy.as_secs_f64();
        if secs > 0.0 {
            (self.succeeded + self.overloaded) as f64 / secs
        } else {
            0.0
        }
    }
}

/// `try_acquire` found the limiter full: the requests in flight and the
/// async callers waiting (each promised the next free permit) reach the
/// limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("concurrency limit reached: {in_flight} in flight and {waiting} waiting, limit {limit}")]
#[non_exhaustive]
pub struct Rejected {
    /// The limit at the time of the refusal.
    pub limit: usize,
    /// Requests in flight at the time of the refusal.
    pub in_flight: usize,
    /// Async callers queued for a permit at the time of the refusal: a
    /// `try_acquire` does not jump their queue, so it is refused below the
    /// limit while they wait.
    pub waiting: usize,
}

/// A limiter driven by an [`Algorithm`], measuring latencies with a
/// [`Clock`]. Cloning is cheap and clones share the same limit.
///
/// # Example
/// ```
/// use torque_parallel::limit::{Adaptive, ConcurrencyLimiter, Limiter};
///
/// let limiter = ConcurrencyLimiter::new(Adaptive::default());
/// let token = limiter.try_acquire().expect("below the limit");
/// // ... call the backend ...
/// token.success();
/// assert_eq!(limiter.stats().in_flight, 0);
/// ```
pub struct ConcurrencyLimiter<A, C = SystemClock> {
    shared: Arc<Shared<A, C>>,
}

struct Shared<A, C> {
    clock: C,
    state: Mutex<State<A>>,
    rejected: AtomicU64,
}

struct State<A> {
    algorithm: A,
    limit: usize,
    in_flight: usize,
    /// Permits handed out so far: the next one's admission number.
    admissions: u64,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    /// What the tokens reported, for [`Stats`].
    report: Report,
}

/// The outcomes and latencies of a limiter's tokens, kept under its lock.
#[derive(Debug)]
struct Report {
    succeeded: u64,
    overloaded: u64,
    ignored: u64,
    /// Earliest start and latest end of a timed request.
    span: Option<(Instant, Instant)>,
    /// Latencies of the successful requests.
    latency: Histogram,
}

impl Report {
    fn new() -> Self {
        Self {
            succeeded: 0,
            overloaded: 0,
            ignored: 0,
            span: None,
            latency: Histogram::new(),
        }
    }

    /// A request timed from `started` to `now` ended with `outcome`
    /// (`Success` or `Overload`).
    fn timed(&mut self, outcome: Outcome, started: Instant, now: Instant, latency: Duration) {
        if outcome == Outcome::Success {
            self.succeeded += 1;
            self.latency.record(latency);
        } else {
            self.overloaded += 1;
        }
        self.span = Some(match self.span {
            Some((first, last)) => (first.min(started), last.max(now)),
            None => (started, now.max(started)),
        });
    }
}

struct Waiter {
    id: u64,
    waker: Waker,
}

impl<A> State<A> {
    /// Where waiter `id` stands in the line. Ids are handed out in
    /// increasing order and the line keeps its order when a waiter leaves,
    /// so it is sorted by id: a binary search, not a scan. (A scan from the
    /// front cost every poll and every cancel the waiters ahead, all under
    /// the lock that releases take: with 30,000 queued, one more poll of
    /// each took 0.2 s, and cancelling them newest first 0.38 s.)
    fn position(&self, id: u64) -> Option<usize> {
        self.waiters.binary_search_by_key(&id, |w| w.id).ok()
    }

    /// Counts one more request in flight; returns its admission number.
    fn admit(&mut self) -> u64 {
        self.in_flight += 1;
        self.admissions += 1;
        self.admissions - 1
    }

    /// Wakes the waiters that fit under the limit; they take their permit
    /// when polled (a woken waiter that was dropped meanwhile hands over in
    /// [`Acquire::drop`]).
    fn wake_admissible(&self) {
        let free = self.limit.saturating_sub(self.in_flight);
        for waiter in self.waiters.iter().take(free) {
            waiter.waker.wake_by_ref();
        }
    }
}

impl<A: Algorithm> ConcurrencyLimiter<A, SystemClock> {
    /// A limiter that measures latencies with the system clock.
    pub fn new(algorithm: A) -> Self {
        Self::with_clock(algorithm, SystemClock)
    }
}

impl<A: Algorithm, C: Clock> ConcurrencyLimiter<A, C> {
    /// A limiter that measures latencies with `clock` (a mock or tokio's
    /// paused clock in tests).
    pub fn with_clock(algorithm: A, clock: C) -> Self {
        let limit = algorithm.initial_limit().max(1);
        // The limit gauge is otherwise set when a token completes: until
        // then, a limiter would publish no limit at all.
        #[cfg(feature = "metrics")]
        super::metrics::record_limit(limit);
        Self {
            shared: Arc::new(Shared {
                clock,
                state: Mutex::new(State {
                    algorithm,
                    limit,
                    in_flight: 0,
                    admissions: 0,
                    waiters: VecDeque::new(),
                    next_waiter: 0,
                    report: Report::new(),
                }),
                rejected: AtomicU64::new(0),
            }),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.shared.state.lock().limit
    }

    /// Like [`Limiter::acquire`], but the future owns a handle to the
    /// limiter (a cheap clone), so it can be stored (in a tower service, a
    /// struct field) without borrowing.
    pub fn acquire_owned(&self) -> Acquire<A, C> {
        Acquire {
            limiter: self.clone(),
            waiter: None,
        }
    }

    /// Runs `f` on the algorithm (to read its own statistics).
    ///
    /// `f` runs under the limiter's lock, which is not reentrant: it must
    /// not use this limiter (`stats`, `limit`, its `Debug`, acquiring a
    /// permit, completing or dropping one of its tokens), or it deadlocks.
    pub fn with_algorithm<R>(&self, f: impl FnOnce(&A) -> R) -> R {
        f(&self.shared.state.lock().algorithm)
    }

    /// Stamps a permit already counted in flight.
    fn token(&self, in_flight: usize, admission: u64) -> Token {
        // The clock may be the user's: if it panics, the permit goes back.
        match catch_unwind(AssertUnwindSafe(|| self.shared.clock.now())) {
            Ok(started) => Token {
                release: Some(self.shared.clone()),
                started,
                in_flight,
                admission,
            },
            Err(payload) => {
                self.shared.return_ignored(admission);
                resume_unwind(payload)
            }
        }
    }
}

impl<A: Algorithm, C: Clock> Limiter for ConcurrencyLimiter<A, C> {
    fn try_acquire(&self) -> Result<Token, Rejected> {
        let mut state = self.shared.state.lock();
        if state.in_flight + state.waiters.len() < state.limit {
            let admission = state.admit();
            let in_flight = state.in_flight;
            // Under the lock, so that concurrent updates set the gauge in
            // the order they happened.
            #[cfg(feature = "metrics")]
            super::metrics::record_acquired(in_flight);
            drop(state);
            Ok(self.token(in_flight, admission))
        } else {
            let rejected = Rejected {
                limit: state.limit,
                in_flight: state.in_flight,
                waiting: state.waiters.len(),
            };
            state.algorithm.rejected();
            drop(state);
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            super::metrics::record_rejected();
            Err(rejected)
        }
    }

    fn acquire(&self) -> impl Future<Output = Token> + Send + '_ {
        self.acquire_owned()
    }

    fn permits_id(&self) -> usize {
        Arc::as_ptr(&self.shared).cast::<()>() as usize
    }

    fn stats(&self) -> Stats {
        let state = self.shared.state.lock();
        let report = &state.report;
        let [latency_p50, latency_p90, latency_p99] = report.latency.percentiles();
        Stats {
            limit: state.limit,
            in_flight: state.in_flight,
            waiting: state.waiters.len(),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            succeeded: report.succeeded,
            overloaded: report.overloaded,
            ignored: report.ignored,
            busy: report
                .span
                .map_or(Duration::ZERO, |(first, last)| last - first),
            latency_p50,
            latency_p90,
            latency_p99,
        }
    }
}

impl<A, C> Clone for ConcurrencyLimiter<A, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<A: fmt::Debug, C: fmt::Debug> fmt::Debug for ConcurrencyLimiter<A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("ConcurrencyLimiter")
            .field("algorithm", &state.algorithm)
            .field("limit", &state.limit)
            .field("in_flight", &state.in_flight)
            .field("waiting", &state.waiters.len())
            .field("clock", &self.shared.clock)
            .finish()
    }
}

/// The future of [`ConcurrencyLimiter::acquire_owned`] (and of
/// [`Limiter::acquire`] on a [`ConcurrencyLimiter`]).
#[must_use = "futures do nothing unless polled"]
pub struct Acquire<A, C> {
    limiter: ConcurrencyLimiter<A, C>,
    waiter: Option<u64>,
}

impl<A: Algorithm, C: Clock> Future for Acquire<A, C> {
    type Output = Token;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Token> {
        let this = self.get_mut();
        let mut state = this.limiter.shared.state.lock();
        let position = this.waiter.and_then(|id| state.position(id));
        let ahead = position.unwrap_or(state.waiters.len());
        if state.in_flight + ahead < state.limit {
            if let Some(position) = position {
                state.waiters.remove(position);
            }
            this.waiter = None;
            let admission = state.admit();
            let in_flight = state.in_flight;
            #[cfg(feature = "metrics")]
            super::metrics::record_acquired(in_flight);
            drop(state);
            return Poll::Ready(this.limiter.token(in_flight, admission));
        }
        match position {
            Some(position) => {
                let waiter = &mut state.waiters[position];
                if !waiter.waker.will_wake(cx.waker()) {
                    waiter.waker = cx.waker().clone();
                }
            }
            None => {
                let id = state.next_waiter;
                state.next_waiter += 1;
                state.waiters.push_back(Waiter {
                    id,
                    waker: cx.waker().clone(),
                });
                this.waiter = Some(id);
            }
        }
        Poll::Pending
    }
}

impl<A, C> Drop for Acquire<A, C> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter.take() {
            let mut state = self.limiter.shared.state.lock();
            if let Some(position) = state.position(id) {
                state.waiters.remove(position);
            }
            // This waiter may have been woken for a free permit: pass it on.
            state.wake_admissible();
        }
    }
}

impl<A, C> fmt::Debug for Acquire<A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("queued", &self.waiter.is_some())
            .finish()
    }
}

impl<A: Algorithm, C> Shared<A, C> {
    /// Gives back a permit whose request feeds the algorithm no sample, and
    /// wakes the waiters it admits; the algorithm hears that admission
    /// `admission` ended.
    fn return_ignored(&self, admission: u64) {
        let mut state = self.state.lock();
        state.in_flight -= 1;
        state.report.ignored += 1;
        // The algorithm may be the user's and must not panic here (this
        // may run while the thread unwinds); if it does all the same, the
        // permit is back and the waiters are woken first.
        let told = catch_unwind(AssertUnwindSafe(|| state.algorithm.ignored(admission)));
        state.wake_admissible();
        // Under the lock, as in `release`.
        #[cfg(feature = "metrics")]
        super::metrics::record_completed(
            Outcome::Ignored,
            std::time::Duration::ZERO,
            state.limit,
            state.in_flight,
        );
        drop(state);
        if let Err(payload) = told
            && !std::thread::panicking()
        {
            resume_unwind(payload);
        }
    }
}

/// Type-erased way back from a token to its limiter.
trait Release: Send + Sync {
    fn release(&self, token: &Token, outcome: Outcome);

    /// The limiter's clock.
    fn now(&self) -> Instant;
}

impl<A: Algorithm, C: Clock> Release for Shared<A, C> {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn release(&self, token: &Token, outcome: Outcome) {
        let (started, in_flight, admission) = (token.started, token.in_flight, token.admission);
        // No sample, so no latency to measure: a token dropped while its
        // thread unwinds reads no clock (whose panic would abort).
        if outcome == Outcome::Ignored {
            self.return_ignored(admission);
            return;
        }
        // The clock may be the user's, like the algorithm: if it panics,
        // the permit is back all the same.
        let now = match catch_unwind(AssertUnwindSafe(|| self.clock.now())) {
            Ok(now) => now,
            Err(payload) => {
                self.return_ignored(admission);
                resume_unwind(payload)
            }
        };
        let latency = now.saturating_duration_since(started);
        let mut state = self.state.lock();
        state.in_flight -= 1;
        state.report.timed(outcome, started, now, latency);
        let sample = Sample {
            now,
            latency,
            in_flight,
            admission,
            admissions: state.admissions,
            remaining: state.in_flight,
            outcome,
        };
        // The algorithm may be the user's: if it panics, the permit is
        // back all the same, and the waiters it admits must still be
        // woken, or they wait for a release that may never come.
        match catch_unwind(AssertUnwindSafe(|| state.algorithm.update(&sample))) {
            Ok(limit) => state.limit = limit.max(1),
            Err(payload) => {
                state.wake_admissible();
                #[cfg(feature = "metrics")]
                super::metrics::record_completed(outcome, latency, state.limit, state.in_flight);
                drop(state);
                resume_unwind(payload);
            }
        }
        state.wake_admissible();
        // Under the lock: a gauge set after it could land after a later
        // update's and leave a stale value.
        #[cfg(feature = "metrics")]
        super::metrics::record_completed(outcome, latency, state.limit, state.in_flight);
    }
}

/// A permit to have one request in flight. Report the outcome with
/// [`success`](Token::success), [`overload`](Token::overload) or
/// [`ignore`](Token::ignore); dropping it counts as `ignore`.
#[must_use = "a token holds a permit until it is completed or dropped"]
pub struct Token {
    release: Option<Arc<dyn Release>>,
    started: Instant,
    in_flight: usize,
    admission: u64,
}

impl Token {
    /// The request succeeded; its latency (since the token was handed out)
    /// feeds the limit algorithm.
    pub fn success(mut self) {
        self.finish(Outcome::Success);
    }

    /// The request timed out or the backend reported overload.
    pub fn overload(mut self) {
        self.finish(Outcome::Overload);
    }

    /// The request says nothing about the backend's load: return the permit
    /// without a sample.
    pub fn ignore(mut self) {
        self.finish(Outcome::Ignored);
    }

    /// Completes the token with an explicit outcome.
    pub fn complete(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    /// When the permit was handed out (by the limiter's clock).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Requests in flight when this one was admitted, itself included.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Restarts the latency measurement now: for a permit taken ahead of
    /// the request (a tower service polled ready before it is called).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn restart(&mut self) {
        if let Some(release) = &self.release {
            self.started = release.now();
        }
    }

    /// A token of no limiter, whose completion reports nothing: for work
    /// run on a permit its caller already holds (an async batch nested in
    /// an item under the same limiter).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn detached(started: Instant) -> Token {
        Token {
            release: None,
            started,
            in_flight: 0,
            admission: 0,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(release) = self.release.take() {
            release.release(self, outcome);
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.finish(Outcome::Ignored);
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("started", &self.started)
            .field("in_flight", &self.in_flight)
            .field("completed", &self.release.is_none())
            .finish()
    }
}
