//! Concurrency limiters: how many requests may be in flight at once.
//!
//! A limiter hands out [`Token`]s. A caller takes one before it calls a
//! backend ([`Limiter::try_acquire`] fails fast with [`Rejected`] at the
//! limit; [`Limiter::acquire`] waits for a permit) and reports how the call
//! went when it is done: [`Token::success`] (the latency is measured by the
//! limiter's [`Clock`]), [`Token::overload`] (a timeout or an explicit
//! overload from the backend) or [`Token::ignore`] (say a client error that
//! says nothing about the backend's load). Dropping a token without a verdict
//! counts as `ignore`, so a cancelled or panicking caller never leaks a permit.
//!
//! The decision of what the limit should be is an [`Algorithm`]: a plain,
//! sans-IO state machine that is fed [`Sample`]s and answers with a new limit.
//! It knows no runtime and reads no clock (each sample carries the instant it
//! was taken), so it can be driven deterministically in tests.
//! [`ConcurrencyLimiter`] wraps any algorithm with the permit bookkeeping.
//!
//! Algorithms: [`Fixed`], [`Aimd`], [`Vegas`], [`Gradient2`] (the Netflix
//! concurrency-limits family), [`Windowed`] (feeds an inner algorithm one
//! averaged sample per window) and [`Adaptive`], the default.

mod adaptive;
mod aimd;
mod clock;
mod config;
mod fixed;
mod gradient2;
mod limiter;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "tower")]
mod tower;
mod vegas;
mod windowed;

use std::time::{Duration, Instant};

pub use adaptive::{Adaptive, AdaptiveBuilder};
pub use aimd::{Aimd, AimdBuilder};
pub use clock::{Clock, MockClock, SystemClock};
pub use config::{AlgorithmKind, LimiterConfig};
pub use fixed::Fixed;
pub use gradient2::{Gradient2, Gradient2Builder};
pub use limiter::{Acquire, ConcurrencyLimiter, Limiter, Rejected, Stats, Token};
#[cfg(feature = "tower")]
pub use tower::{
    Classify, IgnoreErrors, LimitLayer, LimitService, ResponseFuture, ShedFuture, ShedLayer,
    ShedService,
};
pub use vegas::{Vegas, VegasBuilder};
pub use windowed::{Windowed, WindowedBuilder};

/// How a request that held a [`Token`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The backend answered; the latency is a load signal.
    Success,
    /// The request says nothing about the backend's load (a client error, a
    /// cancelled call, a token dropped without a verdict). Only the permit is
    /// returned; the algorithm sees nothing.
    Ignored,
    /// The request timed out or the backend said it is overloaded: a strong
    /// signal to back off.
    Overload,
}

/// One observation fed to an [`Algorithm`].
///
/// A [`ConcurrencyLimiter`] builds them; to feed an algorithm by hand (a
/// limiter of your own, a test), use [`Sample::new`] and, if you number
/// admissions, [`Sample::with_admission`]. Non-exhaustive, so that a field
/// added later breaks no such code.
///
/// ```
/// use std::time::{Duration, Instant};
/// use torque_parallel::limit::{Adaptive, Algorithm, Outcome, Sample};
///
/// let mut adaptive = Adaptive::default();
/// let sample = Sample::new(Instant::now(), Duration::from_millis(20), 1, Outcome::Success)
///     .with_admission(0, 1, 0);
/// assert!(adaptive.update(&sample) >= 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sample {
    /// When the request finished (by the limiter's clock).
    pub now: Instant,
    /// How long the request held its permit.
    pub latency: Duration,
    /// Requests in flight when this one was admitted, itself included.
    pub in_flight: usize,
    /// This request's admission number: a limiter numbers the permits it
    /// hands out 0, 1, 2, …
    pub admission: u64,
    /// Permits the limiter had handed out when this one came back (the
    /// next one's number).
    pub admissions: u64,
    /// Requests still in flight once this one's permit was returned. With
    /// `admissions` and `admission`, an algorithm can tell when every
    /// request admitted before some point has reported (see
    /// [`Algorithm::ignored`] for those that end without a sample).
    pub remaining: usize,
    /// [`Outcome::Success`] or [`Outcome::Overload`]; ignored requests are not
    /// fed to algorithms.
    pub outcome: Outcome,
}

impl Sample {
    /// A request that ended at `now` after holding its permit for
    /// `latency`, admitted with `in_flight` requests in flight (itself
    /// included). It carries no admission numbers (all zero): an algorithm
    /// learns nothing of the requests still in flight from it, and
    /// [`Adaptive`]'s windows then wait four mean latencies for their
    /// stragglers, no longer.
    pub fn new(now: Instant, latency: Duration, in_flight: usize, outcome: Outcome) -> Self {
        Sample {
            now,
            latency,
            in_flight,
            admission: 0,
            admissions: 0,
            remaining: 0,
            outcome,
        }
    }

    /// The same sample with the limiter's admission numbers: this
    /// request's `admission`, the `admissions` handed out so far and the
    /// requests `remaining` in flight (see the fields).
    pub fn with_admission(self, admission: u64, admissions: u64, remaining: usize) -> Self {
        Sample {
            admission,
            admissions,
            remaining,
            ..self
        }
    }

    /// When the request was admitted.
    pub fn started(&self) -> Instant {
        self.now.checked_sub(self.latency).unwrap_or(self.now)
    }
}

/// A sans-IO limit controller: fed samples, it answers with the new limit.
///
/// Implementations must keep the limit within their configured bounds and
/// never return less than 1.
pub trait Algorithm: Send + std::fmt::Debug + 'static {
    /// The limit before any sample has been seen.
    fn initial_limit(&self) -> usize;

    /// Takes one completed request into account and returns the new limit.
    fn update(&mut self, sample: &Sample) -> usize;

    /// A [`Limiter::try_acquire`] was refused at the limit: demand exceeds
    /// the limit and the refused requests are lost, not queued. The default
    /// ignores it.
    fn rejected(&mut self) {}

    /// The request with this [admission number](Sample::admission) ended
    /// without a sample ([`Outcome::Ignored`]): only its permit came back.
    /// Called under the limiter's lock, also while a thread unwinds (a
    /// token dropped by a panic), so it must not panic. The default ignores
    /// it; an algorithm that feeds another one must pass it on, and report
    /// as ignored every sample it absorbs without passing it on
    /// ([`Windowed`] does both): [`Adaptive`] waits for every request in
    /// flight when a window closes, and one never reported holds its windows
    /// until `max_window`.
    fn ignored(&mut self, admission: u64) {
        let _ = admission;
    }
}

impl Algorithm for Box<dyn Algorithm> {
    fn initial_limit(&self) -> usize {
        (**self).initial_limit()
    }

    fn update(&mut self, sample: &Sample) -> usize {
        (**self).update(sample)
    }

    fn rejected(&mut self) {
        (**self).rejected();
    }

    fn ignored(&mut self, admission: u64) {
        (**self).ignored(admission);
    }
}

/// The crate's [`BuildError`], under the name the limit
/// builders have always used.
pub use crate::BuildError;

fn check_bounds(min: usize, max: usize) -> Result<(), BuildError> {
    if min == 0 || min > max {
        return Err(BuildError::Bounds { min, max });
    }
    Ok(())
}

fn check_range(
    name: &'static str,
    value: f64,
    ok: bool,
    expected: &'static str,
) -> Result<(), BuildError> {
    if ok && value.is_finite() {
        return Ok(());
    }
    // An infinity may pass `ok` (say "at least 1.0"): the range would then
    // read as if the value were in it.
    let expected = if ok { "a finite number" } else { expected };
    Err(BuildError::OutOfRange {
        name,
        value,
        expected,
    })
}

/// Rounds a fractional limit and clamps it into `[min, max]` (and at least 1).
fn clamp_limit(limit: f64, min: usize, max: usize) -> usize {
    let min = min.max(1);
    if !limit.is_finite() || limit < min as f64 {
        return min;
    }
    if limit > max as f64 {
        return max;
    }
    limit as usize
}
