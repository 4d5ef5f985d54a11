use std::time::{Duration, Instant};

use super::{Algorithm, BuildError, Outcome, Sample, check_range};

/// Feeds an inner algorithm one sample per window instead of one per request,
/// after Netflix concurrency-limits' `WindowedLimit`.
///
/// A window closes once it holds `min_samples` samples and has lasted
/// `min_window` (or, with fewer samples, `max_window`). The inner algorithm
/// then sees the window's average latency, its largest in-flight count, and
/// an overload if any request in it was one. Averaging keeps service-time
/// variance from being read as queueing, which per-sample delay controllers
/// (Vegas) suffer from. The other requests of the window reach the inner
/// algorithm as [`ignored`](Algorithm::ignored), so that each admission ends
/// once for it, as for an algorithm used alone.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use torque_parallel::limit::{Algorithm, Vegas, Windowed};
///
/// let vegas = Windowed::builder(Vegas::default())
///     .min_window(Duration::from_millis(100))
///     .min_samples(20)
///     .build()?;
/// assert_eq!(vegas.initial_limit(), 20);
/// # Ok::<(), torque_parallel::limit::BuildError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Windowed<A> {
    inner: A,
    limit: usize,
    min_window: Duration,
    max_window: Duration,
    min_samples: usize,
    start: Option<Instant>,
    count: usize,
    latency_sum: f64,
    max_in_flight: usize,
    overload: bool,
}

/// Builder of [`Windowed`].
#[derive(Debug, Clone)]
pub struct WindowedBuilder<A> {
    inner: A,
    min_window: Duration,
    max_window: Duration,
    min_samples: usize,
}

impl<A: Algorithm> Windowed<A> {
    /// A builder around `inner`, with windows of 100 ms to 1 s and at least
    /// 10 samples.
    pub fn builder(inner: A) -> WindowedBuilder<A> {
        WindowedBuilder {
            inner,
            min_window: Duration::from_millis(100),
            max_window: Duration::from_secs(1),
            min_samples: 10,
        }
    }

    /// The wrapped algorithm.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: Algorithm> WindowedBuilder<A> {
    /// The shortest window.
    pub fn min_window(mut self, window: Duration) -> Self {
        self.min_window = window;
        self
    }

    /// The longest window, however few samples it has.
    pub fn max_window(mut self, window: Duration) -> Self {
        self.max_window = window;
        self
    }

    /// Samples a window needs before it may close early (at least 1).
    pub fn min_samples(mut self, samples: usize) -> Self {
        self.min_samples = samples;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// [`BuildError`] when `min_samples` is 0 or `max_window < min_window`.
    pub fn build(self) -> Result<Windowed<A>, BuildError> {
        check_range(
            "min_samples",
            self.min_samples as f64,
            self.min_samples >= 1,
            "at least 1",
        )?;
        check_range(
            "max_window",
            self.max_window.as_secs_f64(),
            self.max_window >= self.min_window,
            "at least min_window",
        )?;
        let limit = self.inner.initial_limit();
        Ok(Windowed {
            inner: self.inner,
            limit,
            min_window: self.min_window,
            max_window: self.max_window,
            min_samples: self.min_samples,
            start: None,
            count: 0,
            latency_sum: 0.0,
            max_in_flight: 0,
            overload: false,
        })
    }
}

impl<A: Algorithm> Algorithm for Windowed<A> {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let start = *self.start.get_or_insert(sample.now);
        self.count += 1;
        self.latency_sum += sample.latency.as_secs_f64();
        self.max_in_flight = self.max_in_flight.max(sample.in_flight);
        self.overload |= sample.outcome == Outcome::Overload;
        let elapsed = sample.now.saturating_duration_since(start);
        let full = self.count >= self.min_samples && elapsed >= self.min_window;
        if full || elapsed >= self.max_window {
            let window = Sample {
                now: sample.now,
                // Saturating: a mean of `Duration::MAX` latencies rounds
                // to 2^64 s, one more than a `Duration` holds.
                latency: Duration::try_from_secs_f64(self.latency_sum / self.count as f64)
                    .unwrap_or(Duration::MAX),
                in_flight: self.max_in_flight,
                admission: sample.admission,
                admissions: sample.admissions,
                remaining: sample.remaining,
                outcome: if self.overload {
                    Outcome::Overload
                } else {
                    Outcome::Success
                },
            };
            self.limit = self.inner.update(&window).max(1);
            self.start = None;
            self.count = 0;
            self.latency_sum = 0.0;
            self.max_in_flight = 0;
            self.overload = false;
        } else {
            // Averaged into a later sample, this request reaches the inner
            // algorithm with no sample of its own: to it, it ended without
            // one. An inner `Adaptive` waits for every request in flight at
            // its cut-off, and without this held each window until
            // `max_window`.
            self.inner.ignored(sample.admission);
        }
        self.limit
    }

    fn rejected(&mut self) {
        self.inner.rejected();
    }

    fn ignored(&mut self, admission: u64) {
        self.inner.ignored(admission);
    }
}
