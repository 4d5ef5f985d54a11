use super::{Algorithm, BuildError, Sample, check_bounds, check_range, clamp_limit};

/// Gradient control between a short and a long latency average, after
/// Netflix concurrency-limits' `Gradient2Limit`.
///
/// Per sample: `gradient = clamp(rtt_tolerance × long_rtt / short_rtt, 0.5,
/// 1)`, `new = limit × gradient + queue_size`, smoothed as `limit × (1 −
/// smoothing) + new × smoothing`. `short_rtt` is the sample's latency,
/// `long_rtt` an exponential average over `long_window` samples (a plain
/// average over the first 10), cut by 5 % whenever it is more than twice the
/// short one so that it forgets a past overload (during the first 10, the
/// next sample's plain average replaces the cut, as in the original). While
/// less than half the limit is in use, the limit does not move. Like the
/// original, it ignores overloads.
///
/// # Example
/// ```
/// use torque_parallel::limit::{Algorithm, Gradient2};
///
/// let g = Gradient2::builder().initial_limit(20).rtt_tolerance(1.5).build()?;
/// assert_eq!(g.initial_limit(), 20);
/// # Ok::<(), torque_parallel::limit::BuildError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Gradient2 {
    limit: f64,
    min: usize,
    max: usize,
    smoothing: f64,
    rtt_tolerance: f64,
    queue_size: f64,
    long_factor: f64,
    long_rtt: f64,
    long_count: usize,
    /// Sum of the warm-up samples: the long average is their plain mean.
    long_sum: f64,
}

/// Builder of [`Gradient2`].
#[derive(Debug, Clone)]
pub struct Gradient2Builder {
    initial: usize,
    min: usize,
    max: usize,
    smoothing: f64,
    rtt_tolerance: f64,
    queue_size: f64,
    long_window: usize,
}

const WARMUP_SAMPLES: usize = 10;

impl Gradient2 {
    /// A builder with Netflix's defaults (initial 20, smoothing 0.2, RTT
    /// tolerance 1.5, long window 600, queue size 4) and bounds 1..=1000.
    pub fn builder() -> Gradient2Builder {
        Gradient2Builder {
            initial: 20,
            min: 1,
            max: 1000,
            smoothing: 0.2,
            rtt_tolerance: 1.5,
            queue_size: 4.0,
            long_window: 600,
        }
    }
}

impl Default for Gradient2 {
    fn default() -> Self {
        Self::builder().build().unwrap_or_else(|_| unreachable!())
    }
}

impl Gradient2Builder {
    /// The limit before any sample (clamped into the bounds).
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.initial = limit;
        self
    }

    /// The lowest limit (at least 1).
    pub fn min_limit(mut self, limit: usize) -> Self {
        self.min = limit;
        self
    }

    /// The highest limit.
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.max = limit;
        self
    }

    /// Weight of a new limit against the old one, in (0, 1].
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// How much slower than the long average a sample may be before the
    /// limit shrinks (at least 1).
    pub fn rtt_tolerance(mut self, tolerance: f64) -> Self {
        self.rtt_tolerance = tolerance;
        self
    }

    /// Headroom added to the limit at each update (queued requests allowed).
    pub fn queue_size(mut self, queue_size: f64) -> Self {
        self.queue_size = queue_size;
        self
    }

    /// Samples in the long latency average (at least 1).
    pub fn long_window(mut self, samples: usize) -> Self {
        self.long_window = samples;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// [`BuildError`] when the bounds are empty or a knob is out of range.
    pub fn build(self) -> Result<Gradient2, BuildError> {
        check_bounds(self.min, self.max)?;
        check_range(
            "smoothing",
            self.smoothing,
            self.smoothing > 0.0 && self.smoothing <= 1.0,
            "in (0, 1]",
        )?;
        check_range(
            "rtt_tolerance",
            self.rtt_tolerance,
            self.rtt_tolerance >= 1.0,
            "at least 1.0",
        )?;
        check_range(
            "queue_size",
            self.queue_size,
            self.queue_size >= 0.0,
            "0 or more",
        )?;
        check_range(
            "long_window",
            self.long_window as f64,
            self.long_window >= 1,
            "at least 1",
        )?;
        Ok(Gradient2 {
            limit: self.initial.clamp(self.min, self.max) as f64,
            min: self.min,
            max: self.max,
            smoothing: self.smoothing,
            rtt_tolerance: self.rtt_tolerance,
            queue_size: self.queue_size,
            long_factor: 2.0 / (self.long_window as f64 + 1.0),
            long_rtt: 0.0,
            long_count: 0,
            long_sum: 0.0,
        })
    }
}

impl Algorithm for Gradient2 {
    fn initial_limit(&self) -> usize {
        clamp_limit(self.limit, self.min, self.max)
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let short = sample.latency.as_secs_f64().max(1e-9);
        // Netflix's `ExpAvgMeasurement`: a plain mean while warming up, of
        // a sum that the cut below does not touch.
        if self.long_count < WARMUP_SAMPLES {
            self.long_count += 1;
            self.long_sum += short;
            self.long_rtt = self.long_sum / self.long_count as f64;
        } else {
            self.long_rtt = self.long_rtt * (1.0 - self.long_factor) + short * self.long_factor;
        }
        let long = self.long_rtt;
        if long / short > 2.0 {
            self.long_rtt *= 0.95;
        }
        if (sample.in_flight as f64) < self.limit / 2.0 {
            return clamp_limit(self.limit, self.min, self.max);
        }
        let gradient = (self.rtt_tolerance * long / short).clamp(0.5, 1.0);
        let new = self.limit * gradient + self.queue_size;
        let new = self.limit * (1.0 - self.smoothing) + new * self.smoothing;
        self.limit = new.clamp(self.min as f64, self.max as f64);
        clamp_limit(self.limit, self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::limit::Outcome;

    fn sample(latency_ms: u64, in_flight: usize) -> Sample {
        Sample {
            now: Instant::now(),
            latency: Duration::from_millis(latency_ms),
            in_flight,
            admission: 0,
            admissions: in_flight as u64,
            remaining: in_flight - 1,
            outcome: Outcome::Success,
        }
    }

    #[test]
    fn gradient_is_tolerance_times_long_over_short_smoothed() {
        let mut g = Gradient2::builder()
            .initial_limit(100)
            .rtt_tolerance(2.0)
            .smoothing(0.5)
            .queue_size(4.0)
            .build()
            .unwrap();
        // long = short: gradient clamps to 1, new = 100 + 4, smoothed 102.
        assert_eq!(g.update(&sample(10, 100)), 102);
        // long = (10 + 50) / 2 = 30, gradient = 2 × 30 / 50 = 1.2 → 1.
        assert_eq!(g.update(&sample(50, 100)), 104);
        // long = 130 / 3 ≈ 43.3, gradient = 2 × 43.3 / 70 ≈ 1.24 → 1.
        assert_eq!(g.update(&sample(70, 100)), 106);
        // long = 500 / 4 = 125, gradient = 2 × 125 / 370 ≈ 0.676:
        // new = 106 × 0.676 + 4 ≈ 75.6, smoothed (106 + 75.6) / 2 ≈ 90.8.
        assert_eq!(g.update(&sample(370, 100)), 90);
        // Less than half in use: the limit holds.
        assert_eq!(g.update(&sample(1000, 40)), 90);
    }

    /// Netflix's `ExpAvgMeasurement` (the long average) is a plain mean of
    /// the first 10 samples, kept as a sum: cutting the long average (when
    /// it is more than twice the short one) during warm-up lasts until the
    /// next sample only. The running mean here carried the cut into every
    /// later average.
    #[test]
    fn regression_the_warm_up_average_is_the_plain_mean() {
        let mut g = Gradient2::builder()
            .initial_limit(1000)
            .rtt_tolerance(1.0)
            .smoothing(1.0)
            .queue_size(0.0)
            .build()
            .unwrap();
        assert_eq!(g.update(&sample(100, 1000)), 1000);
        // long = 55 > 2 × 10: the long average is cut (to 52.25).
        assert_eq!(g.update(&sample(10, 1000)), 1000);
        // long = (100 + 10 + 200) / 3: gradient 0.5167, not 101.5 / 200.
        assert_eq!(g.update(&sample(200, 1000)), 516);
    }
}
