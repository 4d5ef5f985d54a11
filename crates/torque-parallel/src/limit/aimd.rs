use std::time::Duration;

use super::{Algorithm, BuildError, Outcome, Sample, check_bounds, check_range, clamp_limit};

/// Additive increase, multiplicative decrease on overload: the TCP Reno rule
/// applied to concurrency.
///
/// Semantics of Netflix concurrency-limits' `AIMDLimit`: on an overload (or a
/// latency above `timeout`) the limit is multiplied by `backoff_ratio`;
/// otherwise, when the limiter is at least half used, it grows by 1. It does
/// not look at latency below the timeout, so on a backend that only slows down
/// it climbs to `max_limit`.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use torque_parallel::limit::{Aimd, Algorithm};
///
/// let aimd = Aimd::builder()
///     .initial_limit(10)
///     .min_limit(1)
///     .max_limit(200)
///     .backoff_ratio(0.9)
///     .timeout(Duration::from_secs(1))
///     .build()?;
/// assert_eq!(aimd.initial_limit(), 10);
/// # Ok::<(), torque_parallel::limit::BuildError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Aimd {
    limit: f64,
    min: usize,
    max: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

/// Builder of [`Aimd`].
#[derive(Debug, Clone)]
pub struct AimdBuilder {
    initial: usize,
    min: usize,
    max: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

impl Aimd {
    /// A builder with the defaults: initial 20, bounds 1..=1000, backoff 0.9,
    /// timeout 5 s.
    pub fn builder() -> AimdBuilder {
        AimdBuilder {
            initial: 20,
            min: 1,
            max: 1000,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl Default for Aimd {
    fn default() -> Self {
        Self {
            limit: 20.0,
            min: 1,
            max: 1000,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl AimdBuilder {
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

    /// The factor applied on overload, in (0, 1).
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// A success slower than this counts as an overload (more than zero).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// [`BuildError`] when the bounds are empty, the ratio is not in (0, 1)
    /// or the timeout is zero.
    pub fn build(self) -> Result<Aimd, BuildError> {
        check_bounds(self.min, self.max)?;
        check_range(
            "backoff_ratio",
            self.backoff_ratio,
            self.backoff_ratio > 0.0 && self.backoff_ratio < 1.0,
            "between 0 and 1, exclusive (0.9 is usual)",
        )?;
        // Zero would make every success an overload: the limit would sit at
        // `min_limit` whatever the backend does.
        check_range(
            "timeout",
            self.timeout.as_secs_f64(),
            !self.timeout.is_zero(),
            "more than zero",
        )?;
        Ok(Aimd {
            limit: self.initial.clamp(self.min, self.max) as f64,
            min: self.min,
            max: self.max,
            backoff_ratio: self.backoff_ratio,
            timeout: self.timeout,
        })
    }
}

impl Algorithm for Aimd {
    fn initial_limit(&self) -> usize {
        clamp_limit(self.limit, self.min, self.max)
    }

    fn update(&mut self, sample: &Sample) -> usize {
        if sample.outcome == Outcome::Overload || sample.latency > self.timeout {
            self.limit = (self.limit * self.backoff_ratio).floor();
        } else if sample.in_flight.saturating_mul(2) >= self.limit as usize {
            self.limit += 1.0;
        }
        self.limit = self.limit.clamp(self.min as f64, self.max as f64);
        clamp_limit(self.limit, self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn sample(in_flight: usize, outcome: Outcome) -> Sample {
        Sample {
            now: Instant::now(),
            latency: Duration::from_millis(1),
            in_flight,
            admission: 0,
            admissions: in_flight as u64,
            remaining: in_flight - 1,
            outcome,
        }
    }

    /// `Sample` is public and `Aimd` usable alone: an in-flight count above
    /// `usize::MAX / 2` overflowed `in_flight * 2` (a panic in debug
    /// builds, a wrapped count that refused to grow in release ones).
    #[test]
    fn regression_a_huge_in_flight_count_does_not_overflow() {
        let mut aimd = Aimd::builder().initial_limit(10).build().unwrap();
        assert_eq!(aimd.update(&sample(usize::MAX, Outcome::Success)), 11);
        assert_eq!(
            aimd.update(&sample(usize::MAX / 2 + 1, Outcome::Success)),
            12
        );
    }

    #[test]
    fn grows_by_one_only_when_half_used_and_backs_off_by_the_ratio() {
        let mut aimd = Aimd::builder()
            .initial_limit(10)
            .backoff_ratio(0.5)
            .build()
            .unwrap();
        assert_eq!(aimd.update(&sample(4, Outcome::Success)), 10, "app limited");
        assert_eq!(aimd.update(&sample(5, Outcome::Success)), 11);
        assert_eq!(aimd.update(&sample(1, Outcome::Overload)), 5);
    }
}
