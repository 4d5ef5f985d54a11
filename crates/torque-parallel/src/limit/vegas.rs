use std::time::Duration;

use super::{Algorithm, BuildError, Outcome, Sample, check_bounds, check_range, clamp_limit};

/// Delay-based control after TCP Vegas (Brakmo & Peterson, 1995), as Netflix
/// concurrency-limits' `VegasLimit` applies it to concurrency.
///
/// It estimates the queue as `limit × (1 − rtt_noload / rtt)` (rounded up)
/// and keeps it between `alpha = 3·log10(limit)` and `beta =
/// 6·log10(limit)`, with `log10` rounded down and at least 1 (Netflix's
/// `Log10RootFunction`): up to `log10(limit)` the limit grows by `beta`,
/// below alpha by `log10(limit)`, above beta it shrinks by `log10(limit)`;
/// an overload also shrinks it by `log10(limit)`. While less than half the
/// limit is in use, a success leaves it alone. As in Netflix's, a sample
/// that sets `rtt_noload` (the first, one faster than the lowest so far, or
/// a re-measurement, below) changes nothing else, overload or not.
/// `rtt_noload` is the lowest latency seen, reset every
/// `probe_multiplier × limit` samples so that it can rise again. Per-sample
/// latencies are noisy: wrap it in [`Windowed`](super::Windowed) to feed it
/// window averages.
///
/// # Example
/// ```
/// use torque_parallel::limit::{Algorithm, Vegas};
///
/// let vegas = Vegas::builder().initial_limit(20).max_limit(500).build()?;
/// assert_eq!(vegas.initial_limit(), 20);
/// # Ok::<(), torque_parallel::limit::BuildError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Vegas {
    limit: f64,
    min: usize,
    max: usize,
    smoothing: f64,
    probe_multiplier: usize,
    probe_count: usize,
    rtt_noload: Option<Duration>,
}

/// Builder of [`Vegas`].
#[derive(Debug, Clone)]
pub struct VegasBuilder {
    initial: usize,
    min: usize,
    max: usize,
    smoothing: f64,
    probe_multiplier: usize,
}

impl Vegas {
    /// A builder with Netflix's defaults (initial 20, smoothing 1.0, probe
    /// multiplier 30) and bounds 1..=1000.
    pub fn builder() -> VegasBuilder {
        VegasBuilder {
            initial: 20,
            min: 1,
            max: 1000,
            smoothing: 1.0,
            probe_multiplier: 30,
        }
    }
}

impl Default for Vegas {
    fn default() -> Self {
        Self::builder().build().unwrap_or_else(|_| unreachable!())
    }
}

impl VegasBuilder {
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

    /// Forget the no-load latency every `multiplier × limit` samples (0:
    /// never).
    pub fn probe_multiplier(mut self, multiplier: usize) -> Self {
        self.probe_multiplier = multiplier;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// [`BuildError`] when the bounds are empty or smoothing is not in (0, 1].
    pub fn build(self) -> Result<Vegas, BuildError> {
        check_bounds(self.min, self.max)?;
        check_range(
            "smoothing",
            self.smoothing,
            self.smoothing > 0.0 && self.smoothing <= 1.0,
            "in (0, 1]",
        )?;
        Ok(Vegas {
            limit: self.initial.clamp(self.min, self.max) as f64,
            min: self.min,
            max: self.max,
            smoothing: self.smoothing,
            probe_multiplier: self.probe_multiplier,
            probe_count: 0,
            rtt_noload: None,
        })
    }
}

impl Algorithm for Vegas {
    fn initial_limit(&self) -> usize {
        clamp_limit(self.limit, self.min, self.max)
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let current = self.limit;
        let rtt = sample.latency.max(Duration::from_nanos(1));
        self.probe_count += 1;
        // Netflix's `shouldProbe` (without its random jitter):
        // `probeMultiplier × limit <= probeCount`.
        if self.probe_multiplier > 0
            && self.probe_count as f64 >= self.probe_multiplier as f64 * current
        {
            self.probe_count = 0;
            self.rtt_noload = Some(rtt);
            return clamp_limit(current, self.min, self.max);
        }
        let noload = match self.rtt_noload {
            Some(noload) if rtt >= noload => noload,
            _ => {
                self.rtt_noload = Some(rtt);
                return clamp_limit(current, self.min, self.max);
            }
        };
        // Netflix's `Log10RootFunction`: max(1, ⌊log10(limit)⌋).
        let log = current.max(1.0).log10().floor().max(1.0);
        let new = if sample.outcome == Outcome::Overload {
            current - log
        } else if (sample.in_flight as f64) * 2.0 < current {
            // Application limited: the latency says nothing about the limit.
            return clamp_limit(current, self.min, self.max);
        } else {
            let queue = (current * (1.0 - noload.as_secs_f64() / rtt.as_secs_f64())).ceil();
            let (alpha, beta, threshold) = (3.0 * log, 6.0 * log, log);
            if queue <= threshold {
                current + beta
            } else if queue < alpha {
                current + log
            } else if queue > beta {
                current - log
            } else {
                return clamp_limit(current, self.min, self.max);
            }
        };
        let new = new.clamp(self.min as f64, self.max as f64);
        self.limit = (1.0 - self.smoothing) * current + self.smoothing * new;
        clamp_limit(self.limit, self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

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
    fn keeps_the_queue_between_alpha_and_beta_of_log10_limit() {
        // limit 100: log10 = 2, alpha = 6, beta = 12.
        let mut vegas = Vegas::builder().initial_limit(100).build().unwrap();
        assert_eq!(vegas.update(&sample(100, 100)), 100, "sets rtt_noload");
        // queue = ceil(100 × (1 − 100/101)) = 1 ≤ log10: grow by beta.
        assert_eq!(vegas.update(&sample(101, 100)), 112);
        // queue = ceil(112 × (1 − 100/105)) = 6: not below alpha, not above beta.
        assert_eq!(vegas.update(&sample(105, 100)), 112);
        // queue = ceil(112 × (1 − 100/110)) = 11: not above beta either.
        assert_eq!(vegas.update(&sample(110, 100)), 112);
        // queue = ceil(112 × (1 − 100/113)) = 13 > beta: shrink by log10.
        assert_eq!(vegas.update(&sample(113, 100)), 110);
        // Less than half in use: the latency says nothing.
        assert_eq!(vegas.update(&sample(200, 54)), 110);
    }

    /// The doc (and Netflix's `shouldProbe`, `probeMultiplier × limit <=
    /// probeCount`) re-measures rtt_noload every `probe_multiplier × limit`
    /// samples; the test was `>`, one sample late each time.
    #[test]
    fn regression_probes_every_multiplier_times_limit_samples() {
        let mut vegas = Vegas::builder()
            .initial_limit(10)
            .probe_multiplier(1)
            .build()
            .unwrap();
        assert_eq!(vegas.update(&sample(10, 10)), 10, "sets rtt_noload");
        // queue = ceil(10 × (1 − 10/20)) = 5, between alpha (3) and beta (6).
        for _ in 2..=10 {
            assert_eq!(vegas.update(&sample(20, 10)), 10);
        }
        // The 10th sample re-measured rtt_noload at 20 ms: no queue now.
        assert_eq!(vegas.update(&sample(20, 10)), 16);
    }

    #[test]
    fn an_overload_shrinks_by_log10_unless_it_sets_the_no_load_latency() {
        let overload = |latency_ms| Sample {
            outcome: Outcome::Overload,
            ..sample(latency_ms, 100)
        };
        let mut vegas = Vegas::builder().initial_limit(100).build().unwrap();
        assert_eq!(
            vegas.update(&overload(100)),
            100,
            "the first sets rtt_noload"
        );
        assert_eq!(
            vegas.update(&overload(90)),
            100,
            "a faster one sets it again"
        );
        // At or above rtt_noload: shrink by ⌊log10(limit)⌋, 2 at 100 and 1
        // at 98.
        assert_eq!(vegas.update(&overload(90)), 98);
        assert_eq!(vegas.update(&overload(500)), 97);
    }
}
