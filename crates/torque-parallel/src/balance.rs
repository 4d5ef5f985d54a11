//! Balancing: which of several workers or backends gets the next request.
//!
//! A [`Balancer`] holds a set of backend handles (connection pools, worker
//! queues, URLs — any `B`) and answers [`pick`](Balancer::pick) with a
//! [`Pick`] guard for one of them. The guard counts as one request in flight
//! on its backend until it is dropped; dropping it also records the latency
//! since the pick (by the balancer's [`Clock`]), which feeds the peak-EWMA
//! estimate. [`Pick::discard`] gives the slot back without a latency, for a
//! request that never reached the backend; [`Pick::fail`] reports that the
//! backend failed it (refused, reset, a server error): every strategy then
//! leaves the backend out for the `failure_penalty` (1 s), unless all are
//! out, and tries it again after. A failure is not a latency: a backend that
//! refuses at once would otherwise look the fastest and draw most requests.
//!
//! Strategies ([`Strategy`]):
//! - `RoundRobin`: each backend in turn; even, blind to load.
//! - `LeastBusy`: the backend with the fewest requests in flight (ties in
//!   turn); good when backends are alike and requests vary.
//! - `PeakEwma` (the default): power of two choices — two backends drawn at
//!   random, the cheaper wins — where a backend's cost is its peak-EWMA
//!   latency × (in flight + 1). It sends less to a slow or overloaded
//!   backend and, unlike "always the best", never stampedes onto one.
//!
//! Sans-IO: no runtime, no sockets; time comes from a [`Clock`] and the
//! randomness from a seeded generator, so tests are deterministic.
//!
//! # Example
//! ```
//! use torque_parallel::balance::{Balancer, Strategy};
//!
//! let balancer = Balancer::builder()
//!     .strategy(Strategy::LeastBusy)
//!     .build(vec!["db-a", "db-b"])?;
//! let first = balancer.pick();
//! let second = balancer.pick(); // the first backend is busy: the other one
//! assert_ne!(*first, *second);
//! let still_busy = second.index();
//! drop(first); // frees the slot and records the latency
//! assert_eq!(balancer.stats()[still_busy].in_flight, 1);
//! # Ok::<(), torque_parallel::BuildError>(())
//! ```

use std::fmt;
use std::hash::BuildHasher;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::BuildError;
use crate::limit::{Clock, SystemClock};

/// How a [`Balancer`] picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Each backend in turn.
    RoundRobin,
    /// The backend with the fewest requests in flight; ties in turn.
    LeastBusy,
    /// Power of two choices over peak-EWMA latency × (in flight + 1).
    #[default]
    PeakEwma,
}

/// Picks backends for requests; see the [module docs](self). Cloning is
/// cheap and clones share the counters and estimates.
pub struct Balancer<B, C = SystemClock> {
    shared: Arc<Shared<B, C>>,
}

impl<B, C> Clone for Balancer<B, C> {
    fn clone(&self) -> Self {
        Balancer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<B: fmt::Debug, C: Clock> fmt::Debug for Balancer<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("strategy", &self.shared.strategy)
            .field(
                "backends",
                &self
                    .shared
                    .backends
                    .iter()
                    .map(|b| &b.handle)
                    .collect::<Vec<_>>(),
            )
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Shared<B, C> {
    backends: Vec<Backend<B>>,
    strategy: Strategy,
    next: AtomicUsize,
    rng: AtomicU64,
    clock: C,
    decay_ns: f64,
    /// The balancer's time zero, for the ejection deadlines.
    base: Instant,
    penalty_ns: u64,
}

struct Backend<B> {
    handle: B,
    in_flight: AtomicUsize,
    picks: AtomicU64,
    failures: AtomicU64,
    /// Left out until this many nanoseconds after `base` (0: not left out).
    out_until_ns: AtomicU64,
    rtt: Mutex<Rtt>,
}

impl<B, C> Shared<B, C> {
    /// Nanoseconds from the balancer's time zero to `now`.
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }
}

impl<B> Backend<B> {
    /// Whether the backend may be picked at `now_ns` (after `base`).
    fn available(&self, now_ns: u64) -> bool {
        let until = self.out_until_ns.load(Ordering::Acquire);
        until == 0 || now_ns >= until
    }
}

/// A peak-EWMA latency estimate: it jumps up to any slower sample at once
/// and decays towards faster ones (and towards zero while idle) with time
/// constant `decay`. After Finagle's `PeakEwma`
/// (finagle-core `loadbalancer/PeakEwma.scala`) and linkerd2's port in
/// tower (`tower::load::peak_ewma::RttEstimate`).
#[derive(Debug, Clone, Copy)]
struct Rtt {
    ns: f64,
    at: Instant,
}

impl Rtt {
    fn update(&mut self, rtt_ns: f64, now: Instant, decay_ns: f64) -> f64 {
        if rtt_ns > self.ns {
            self.ns = rtt_ns;
        } else {
            // Weight of the old estimate: e^(−elapsed/τ), so the average is
            // per unit of time, not per sample.
            let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
            let keep = (-elapsed / decay_ns).exp();
            self.ns = self.ns * keep + rtt_ns * (1.0 - keep);
        }
        self.at = self.at.max(now);
        self.ns
    }
}

/// Builds a [`Balancer`]; every setting has a default.
#[derive(Debug, Clone)]
#[must_use]
pub struct BalancerBuilder {
    strategy: Strategy,
    seed: Option<u64>,
    decay: Duration,
    default_rtt: Duration,
    failure_penalty: Duration,
}

impl Default for BalancerBuilder {
    fn default() -> Self {
        // Finagle's and linkerd's defaults: 10 s decay, 30 ms for a backend
        // not heard from yet.
        BalancerBuilder {
            strategy: Strategy::default(),
            seed: None,
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            failure_penalty: Duration::from_secs(1),
        }
    }
}

impl BalancerBuilder {
    /// How to pick (default [`Strategy::PeakEwma`]).
    ///
    /// ```
    /// use torque_parallel::balance::{Balancer, Strategy};
    /// let balancer = Balancer::builder().strategy(Strategy::RoundRobin).build(vec![1, 2])?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Seeds the random draws of `PeakEwma`, for reproducible tests (default:
    /// a per-process random seed).
    ///
    /// ```
    /// let balancer = torque_parallel::balance::Balancer::builder().seed(7).build(vec![1, 2])?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Time constant of the latency average (default 10 s, at most an
    /// hour): how long an old latency keeps weighing.
    ///
    /// ```
    /// use std::time::Duration;
    /// let balancer = torque_parallel::balance::Balancer::builder()
    ///     .decay(Duration::from_secs(5))
    ///     .build(vec![1, 2])?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// The latency assumed for a backend before it has answered (default
    /// 30 ms, at most an hour).
    ///
    /// ```
    /// use std::time::Duration;
    /// let balancer = torque_parallel::balance::Balancer::builder()
    ///     .default_rtt(Duration::from_millis(5))
    ///     .build(vec![1, 2])?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.default_rtt = rtt;
        self
    }

    /// How long a backend is left out after a request it failed
    /// ([`Pick::fail`]; default 1 s, at most an hour). Then the next pick
    /// may try it again.
    ///
    /// ```
    /// use std::time::Duration;
    /// let balancer = torque_parallel::balance::Balancer::builder()
    ///     .failure_penalty(Duration::from_secs(5))
    ///     .build(vec![1, 2])?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
        self
    }

    /// A balancer over `backends` on the system clock.
    ///
    /// # Errors
    /// [`BuildError::Zero`] with no backend; [`BuildError::OutOfRange`] for
    /// a zero or over-an-hour `decay`, `default_rtt` or `failure_penalty`.
    pub fn build<B>(self, backends: Vec<B>) -> Result<Balancer<B>, BuildError> {
        self.build_with_clock(backends, SystemClock)
    }

    /// A balancer over `backends` measuring latencies with `clock` (a
    /// [`MockClock`](crate::limit::MockClock) in tests).
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn build_with_clock<B, C: Clock>(
        self,
        backends: Vec<B>,
        clock: C,
    ) -> Result<Balancer<B, C>, BuildError> {
        if backends.is_empty() {
            return Err(BuildError::Zero("backends"));
        }
        for (name, value) in [
            ("decay", self.decay),
            ("default_rtt", self.default_rtt),
            ("failure_penalty", self.failure_penalty),
        ] {
            if value.is_zero() || value > Duration::from_secs(3600) {
                return Err(BuildError::OutOfRange {
                    name,
                    value: value.as_secs_f64(),
                    expected: "seconds, above 0 and at most 3600",
                });
            }
        }
        let seed = self
            .seed
            .unwrap_or_else(|| std::collections::hash_map::RandomState::new().hash_one(0u8));
        let now = clock.now();
        let default_ns = self.default_rtt.as_nanos() as f64;
        Ok(Balancer {
            shared: Arc::new(Shared {
                backends: backends
                    .into_iter()
                    .map(|handle| Backend {
                        handle,
                        in_flight: AtomicUsize::new(0),
                        picks: AtomicU64::new(0),
                        failures: AtomicU64::new(0),
                        out_until_ns: AtomicU64::new(0),
                        rtt: Mutex::new(Rtt {
                            ns: default_ns,
                            at: now,
                        }),
                    })
                    .collect(),
                strategy: self.strategy,
                next: AtomicUsize::new(0),
                rng: AtomicU64::new(seed),
                clock,
                decay_ns: self.decay.as_nanos() as f64,
                base: now,
                penalty_ns: self.failure_penalty.as_nanos() as u64,
            }),
        })
    }
}

/// A snapshot of one backend in a [`Balancer`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BackendStats {
    /// Picks not yet dropped.
    pub in_flight: usize,
    /// Picks since the balancer was built.
    pub picks: u64,
    /// Picks reported failed ([`Pick::fail`]) since the balancer was built.
    pub failures: u64,
    /// Left out (ejected) after a failure ([`Pick::fail`]), as of the
    /// snapshot.
    pub ejected: bool,
    /// The peak-EWMA latency estimate as of the last update.
    pub latency: Duration,
}

impl Balancer<()> {
    /// A builder with the defaults: `PeakEwma`, 10 s decay, 30 ms default
    /// latency, a random seed.
    pub fn builder() -> BalancerBuilder {
        BalancerBuilder::default()
    }
}

impl<B, C: Clock> Balancer<B, C> {
    /// Picks a backend for one request. The returned guard holds one
    /// in-flight slot on it until dropped.
    pub fn pick(&self) -> Pick<B, C> {
        let s = &*self.shared;
        let now = s.clock.now();
        let now_ns = s.nanos(now);
        let index = match s.strategy {
            Strategy::RoundRobin => {
                let n = s.backends.len();
                let first = s.next.fetch_add(1, Ordering::Relaxed) % n;
                // A backend left out passes its turn on to the next one in,
                // whose turn is then taken too, so the others share its
                // requests evenly; when all are out, the one in turn (the
                // turns are not skipped then: skipping the whole ring
                // landed every pick on the same backend).
                let i = if s.backends[first].available(now_ns) {
                    first
                } else {
                    match (1..n)
                        .map(|k| (first + k) % n)
                        .find(|&i| s.backends[i].available(now_ns))
                    {
                        Some(i) => {
                            s.next.fetch_add((i + n - first) % n, Ordering::Relaxed);
                            i
                        }
                        None => first,
                    }
                };
                s.backends[i].in_flight.fetch_add(1, Ordering::AcqRel);
                i
            }
            Strategy::LeastBusy => self.least_busy(now_ns),
            Strategy::PeakEwma => {
                let i = self.two_choices(now, now_ns);
                s.backends[i].in_flight.fetch_add(1, Ordering::AcqRel);
                i
            }
        };
        s.backends[index].picks.fetch_add(1, Ordering::Relaxed);
        Pick {
            shared: Arc::clone(&self.shared),
            index,
            started: now,
            record: true,
            failed: false,
        }
    }

    /// The backends, in the order given to `build`.
    pub fn backends(&self) -> impl ExactSizeIterator<Item = &B> {
        self.shared.backends.iter().map(|b| &b.handle)
    }

    /// One snapshot per backend, in the order given to `build`.
    pub fn stats(&self) -> Vec<BackendStats> {
        let s = &*self.shared;
        let now_ns = s.nanos(s.clock.now());
        s.backends
            .iter()
            .map(|b| BackendStats {
                in_flight: b.in_flight.load(Ordering::Acquire),
                picks: b.picks.load(Ordering::Relaxed),
                failures: b.failures.load(Ordering::Relaxed),
                ejected: !b.available(now_ns),
                latency: Duration::from_nanos(b.rtt.lock().ns as u64),
            })
            .collect()
    }

    fn least_busy(&self, now_ns: u64) -> usize {
        let s = &*self.shared;
        // A backend left out after a failure is never busy: without this it
        // would draw every request. Unless all are out.
        let all_out = s.backends.iter().all(|b| !b.available(now_ns));
        self.least_busy_from(now_ns, all_out)
    }

    /// `least_busy` once it has found whether `all_out`; another thread's
    /// [`Pick::fail`] may have made that stale since.
    fn least_busy_from(&self, now_ns: u64, mut all_out: bool) -> usize {
        let s = &*self.shared;
        let n = s.backends.len();
        // Start the scan at a rotating offset so ties go round-robin.
        let start = s.next.fetch_add(1, Ordering::Relaxed);
        loop {
            let mut found: Option<(usize, usize)> = None;
            for k in 0..n {
                let i = start.wrapping_add(k) % n;
                if !all_out && !s.backends[i].available(now_ns) {
                    continue;
                }
                let load = s.backends[i].in_flight.load(Ordering::Acquire);
                if found.is_none_or(|(_, least)| load < least) {
                    found = Some((i, load));
                }
            }
            let Some((best, least)) = found else {
                // The last backend in went out after `all_out` was read
                // (another thread's `Pick::fail`): all are out now.
                all_out = true;
                continue;
            };
            // Claim only if nobody moved it meanwhile, so that concurrent
            // pickers cannot pile onto the same backend.
            if s.backends[best]
                .in_flight
                .compare_exchange(least, least + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return best;
            }
        }
    }

    fn two_choices(&self, now: Instant, now_ns: u64) -> usize {
        let s = &*self.shared;
        let n = s.backends.len();
        if n == 1 {
            return 0;
        }
        // Mitzenmacher, "The Power of Two Choices in Randomized Load
        // Balancing" (2001): two random candidates, the less loaded wins.
        let r = self.random();
        let a = (r % n as u64) as usize;
        let mut b = ((r >> 32) % (n as u64 - 1)) as usize;
        if b >= a {
            b += 1;
        }
        let (a_in, b_in) = (
            s.backends[a].available(now_ns),
            s.backends[b].available(now_ns),
        );
        if a_in != b_in {
            return if a_in { a } else { b };
        }
        if !a_in {
            // Both left out after failures: the cheapest of those still in,
            // if any (a full scan, only while backends fail).
            if let Some(i) = (0..n)
                .filter(|&i| s.backends[i].available(now_ns))
                .min_by(|&i, &j| self.cost(i, now).total_cmp(&self.cost(j, now)))
            {
                return i;
            }
        }
        if self.cost(b, now) < self.cost(a, now) {
            b
        } else {
            a
        }
    }

    fn cost(&self, i: usize, now: Instant) -> f64 {
        let s = &*self.shared;
        let backend = &s.backends[i];
        let pending = backend.in_flight.load(Ordering::Acquire);
        // Reading decays the estimate towards zero, so a backend that has
        // not answered for a while is tried again (tower's `decay`).
        // Floored at 1 ns: an estimate decayed to zero (e^(−t/τ) underflows
        // after a long idle spell) would make every cost 0 and the choice
        // blind to load.
        let rtt = backend.rtt.lock().update(0.0, now, s.decay_ns);
        rtt.max(1.0) * (pending + 1) as f64
    }

    fn random(&self) -> u64 {
        // SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): one atomic add per
        // draw, deterministic for a given seed and order of picks.
        let mut z = self
            .shared
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One request's claim on a backend: dereferences to the backend handle,
/// counts as in flight until dropped, and on drop records the latency since
/// the pick.
#[must_use = "dropping the pick at once records a near-zero latency"]
pub struct Pick<B, C: Clock = SystemClock> {
    shared: Arc<Shared<B, C>>,
    index: usize,
    started: Instant,
    record: bool,
    failed: bool,
}

impl<B, C: Clock> Pick<B, C> {
    /// The backend's position in the list given to `build`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The backend handle.
    pub fn backend(&self) -> &B {
        &self.shared.backends[self.index].handle
    }

    /// Gives the slot back without recording a latency: for a request that
    /// never reached the backend (cancelled, refused locally).
    pub fn discard(mut self) {
        self.record = false;
    }

    /// Gives the slot back and reports that the backend failed the request
    /// (refused the connection, reset it, answered with a server error):
    /// no latency is recorded, and every strategy leaves the backend out
    /// for the balancer's `failure_penalty` (unless every backend is out),
    /// then tries it again. Dropped instead, a request that failed at once
    /// would count as a fast answer, and a dead backend would draw most of
    /// the requests (peak-EWMA: it looks fastest; least-busy: it is never
    /// busy).
    ///
    /// ```
    /// use torque_parallel::balance::{Balancer, Strategy};
    ///
    /// let balancer = Balancer::builder()
    ///     .strategy(Strategy::RoundRobin)
    ///     .build(vec!["db-a", "db-b"])?;
    /// let pick = balancer.pick();
    /// assert_eq!(*pick, "db-a");
    /// pick.fail(); // db-a refused the connection
    /// assert_eq!(*balancer.pick(), "db-b");
    /// assert_eq!(*balancer.pick(), "db-b", "db-a is left out for a second");
    /// assert_eq!(balancer.stats()[0].failures, 1);
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn fail(mut self) {
        self.record = false;
        self.failed = true;
    }
}

impl<B, C: Clock> Deref for Pick<B, C> {
    type Target = B;

    fn deref(&self) -> &B {
        self.backend()
    }
}

impl<B: fmt::Debug, C: Clock> fmt::Debug for Pick<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("index", &self.index)
            .field("backend", self.backend())
            .finish_non_exhaustive()
    }
}

impl<B, C: Clock> Drop for Pick<B, C> {
    fn drop(&mut self) {
        let s = &*self.shared;
        let backend = &s.backends[self.index];
        // The slot is given back last (after a failure has left the
        // backend out, so that no picker takes it as free meanwhile), and
        // also when the clock, which may be the caller's, panics below:
        // the slot would be kept for good (least-busy would then pass the
        // backend over).
        struct GiveBack<'a>(&'a AtomicUsize);
        impl Drop for GiveBack<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _give_back = GiveBack(&backend.in_flight);
        if self.record {
            let now = s.clock.now();
            let rtt = now.saturating_duration_since(self.started).as_nanos() as f64;
            backend.rtt.lock().update(rtt, now, s.decay_ns);
        }
        if self.failed {
            backend.failures.fetch_add(1, Ordering::Relaxed);
            // At least 1: 0 means "not left out".
            let until = s.nanos(s.clock.now()).saturating_add(s.penalty_ns).max(1);
            backend.out_until_ns.fetch_max(until, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::MockClock;

    /// A least-busy pick found a backend still in, then another thread's
    /// failure left the last one out before the scan: the scan skipped
    /// every backend and tried to claim "none" (index 0 at `usize::MAX`
    /// in flight), which overflowed (a panic in debug builds, a spin
    /// forever in release ones).
    #[test]
    fn regression_least_busy_survives_the_last_backend_going_out_mid_pick() {
        let balancer = Balancer::builder()
            .strategy(Strategy::LeastBusy)
            .build_with_clock(vec!["a", "b"], MockClock::new())
            .unwrap();
        balancer.pick().fail();
        balancer.pick().fail();
        let s = &*balancer.shared;
        let now_ns = s.nanos(s.clock.now());
        assert!(s.backends.iter().all(|b| !b.available(now_ns)));
        // As the pick that read "not all out" before the second failure.
        let i = balancer.least_busy_from(now_ns, false);
        assert_eq!(s.backends[i].in_flight.load(Ordering::Acquire), 1);
        assert_eq!(s.backends[1 - i].in_flight.load(Ordering::Acquire), 0);
    }
}
