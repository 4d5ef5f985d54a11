//! [`LimiterConfig`]: every limit algorithm's settings as one plain struct,
//! for settings loaded from files.

use std::time::Duration;

use super::{Adaptive, Aimd, Algorithm, BuildError, ConcurrencyLimiter, Fixed, Gradient2, Vegas};

/// Which [`Algorithm`] a [`LimiterConfig`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum AlgorithmKind {
    /// [`Fixed`]: `initial_limit` is the limit.
    Fixed,
    /// [`Aimd`].
    Aimd,
    /// [`Vegas`].
    Vegas,
    /// [`Gradient2`].
    Gradient2,
    /// [`Adaptive`], the default.
    #[default]
    Adaptive,
}

impl AlgorithmKind {
    fn name(self) -> &'static str {
        match self {
            AlgorithmKind::Fixed => "fixed",
            AlgorithmKind::Aimd => "aimd",
            AlgorithmKind::Vegas => "vegas",
            AlgorithmKind::Gradient2 => "gradient2",
            AlgorithmKind::Adaptive => "adaptive",
        }
    }
}

/// The settings of any limit algorithm as one plain struct (`Default`,
/// serde with the `serde` feature), beside the builders. `None` keeps the
/// algorithm's default; a setting the chosen algorithm does not have is a
/// [`BuildError::NotApplicable`] rather than silently ignored. With serde,
/// field names are as below, `algorithm` is snake case (`"gradient2"`),
/// missing fields take their defaults, unknown fields are refused, and
/// durations use serde's `{ secs, nanos }` form.
///
/// # Example
/// ```
/// use torque_parallel::limit::{AlgorithmKind, Limiter, LimiterConfig};
///
/// let mut config = LimiterConfig::default(); // Adaptive, its defaults
/// config.max_limit = Some(64);
/// let limiter = config.build()?;
/// assert!(limiter.stats().limit <= 64);
///
/// let mut fixed = LimiterConfig::default();
/// fixed.algorithm = AlgorithmKind::Fixed;
/// fixed.initial_limit = Some(8);
/// assert_eq!(fixed.build()?.stats().limit, 8);
///
/// fixed.headroom = Some(0.05); // an Adaptive knob
/// assert!(fixed.build().is_err());
/// # Ok::<(), torque_parallel::BuildError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct LimiterConfig {
    /// Which algorithm (default `adaptive`).
    pub algorithm: AlgorithmKind,
    /// The limit before any sample; for `fixed`, the limit (required); for
    /// `adaptive`, the limit after its start-up probe, which runs at
    /// `probe_limit` when that is lower.
    pub initial_limit: Option<usize>,
    /// The lowest limit (all but `fixed`).
    pub min_limit: Option<usize>,
    /// The highest limit (all but `fixed`).
    pub max_limit: Option<usize>,
    /// Multiplier on overload (`aimd`, `adaptive`).
    pub backoff_ratio: Option<f64>,
    /// Latency counted as an overload (`aimd`).
    pub timeout: Option<Duration>,
    /// Smoothing of limit changes (`vegas`, `gradient2`).
    pub smoothing: Option<f64>,
    /// Forget the no-load latency every `probe_multiplier × limit` samples,
    /// 0 never (`vegas`).
    pub probe_multiplier: Option<usize>,
    /// Latency ratio tolerated before backing off (`gradient2`).
    pub rtt_tolerance: Option<f64>,
    /// Headroom added to the limit at each update (`gradient2`).
    pub queue_size: Option<f64>,
    /// Samples in the long latency average (`gradient2`).
    pub long_window: Option<usize>,
    /// Samples a window needs at least (`adaptive`).
    pub min_samples: Option<usize>,
    /// Longest window (`adaptive`).
    pub max_window: Option<Duration>,
    /// Queueing aimed at, as a fraction of the no-load latency (`adaptive`).
    pub headroom: Option<f64>,
    /// How often the no-load latency is re-measured (`adaptive`).
    pub probe_interval: Option<Duration>,
    /// The limit the no-load latency is measured at (`adaptive`).
    pub probe_limit: Option<usize>,
}

impl LimiterConfig {
    /// Validates the settings and builds the algorithm.
    ///
    /// # Errors
    /// [`BuildError::Missing`] for `fixed` without `initial_limit`,
    /// [`BuildError::NotApplicable`] for a setting the algorithm does not
    /// have, and whatever the algorithm's builder refuses.
    pub fn build_algorithm(&self) -> Result<Box<dyn Algorithm>, BuildError> {
        let c = self;
        let kind = c.algorithm;
        let set: [(&'static str, bool, &[AlgorithmKind]); 15] = {
            use AlgorithmKind::*;
            [
                (
                    "initial_limit",
                    c.initial_limit.is_some(),
                    &[Fixed, Aimd, Vegas, Gradient2, Adaptive],
                ),
                (
                    "min_limit",
                    c.min_limit.is_some(),
                    &[Aimd, Vegas, Gradient2, Adaptive],
                ),
                (
                    "max_limit",
                    c.max_limit.is_some(),
                    &[Aimd, Vegas, Gradient2, Adaptive],
                ),
                (
                    "backoff_ratio",
                    c.backoff_ratio.is_some(),
                    &[Aimd, Adaptive],
                ),
                ("timeout", c.timeout.is_some(), &[Aimd]),
                ("smoothing", c.smoothing.is_some(), &[Vegas, Gradient2]),
                ("probe_multiplier", c.probe_multiplier.is_some(), &[Vegas]),
                ("rtt_tolerance", c.rtt_tolerance.is_some(), &[Gradient2]),
                ("queue_size", c.queue_size.is_some(), &[Gradient2]),
                ("long_window", c.long_window.is_some(), &[Gradient2]),
                ("min_samples", c.min_samples.is_some(), &[Adaptive]),
                ("max_window", c.max_window.is_some(), &[Adaptive]),
                ("headroom", c.headroom.is_some(), &[Adaptive]),
                ("probe_interval", c.probe_interval.is_some(), &[Adaptive]),
                ("probe_limit", c.probe_limit.is_some(), &[Adaptive]),
            ]
        };
        for (name, is_set, applies) in set {
            if is_set && !applies.contains(&kind) {
                return Err(BuildError::NotApplicable {
                    name,
                    algorithm: kind.name(),
                });
            }
        }
        Ok(match kind {
            AlgorithmKind::Fixed => match c.initial_limit {
                None => {
                    return Err(BuildError::Missing {
                        name: "initial_limit",
                        algorithm: kind.name(),
                    });
                }
                Some(0) => return Err(BuildError::Zero("initial_limit")),
                Some(limit) => Box::new(Fixed::new(limit)),
            },
            AlgorithmKind::Aimd => {
                let mut b = Aimd::builder();
                if let Some(v) = c.initial_limit {
                    b = b.initial_limit(v);
                }
                if let Some(v) = c.min_limit {
                    b = b.min_limit(v);
                }
                if let Some(v) = c.max_limit {
                    b = b.max_limit(v);
                }
                if let Some(v) = c.backoff_ratio {
                    b = b.backoff_ratio(v);
                }
                if let Some(v) = c.timeout {
                    b = b.timeout(v);
                }
                Box::new(b.build()?)
            }
            AlgorithmKind::Vegas => {
                let mut b = Vegas::builder();
                if let Some(v) = c.initial_limit {
                    b = b.initial_limit(v);
                }
                if let Some(v) = c.min_limit {
                    b = b.min_limit(v);
                }
                if let Some(v) = c.max_limit {
                    b = b.max_limit(v);
                }
                if let Some(v) = c.smoothing {
                    b = b.smoothing(v);
                }
                if let Some(v) = c.probe_multiplier {
                    b = b.probe_multiplier(v);
                }
                Box::new(b.build()?)
            }
            AlgorithmKind::Gradient2 => {
                let mut b = Gradient2::builder();
                if let Some(v) = c.initial_limit {
                    b = b.initial_limit(v);
                }
                if let Some(v) = c.min_limit {
                    b = b.min_limit(v);
                }
                if let Some(v) = c.max_limit {
                    b = b.max_limit(v);
                }
                if let Some(v) = c.smoothing {
                    b = b.smoothing(v);
                }
                if let Some(v) = c.rtt_tolerance {
                    b = b.rtt_tolerance(v);
                }
                if let Some(v) = c.queue_size {
                    b = b.queue_size(v);
                }
                if let Some(v) = c.long_window {
                    b = b.long_window(v);
                }
                Box::new(b.build()?)
            }
            AlgorithmKind::Adaptive => {
                let mut b = Adaptive::builder();
                if let Some(v) = c.initial_limit {
                    b = b.initial_limit(v);
                }
                if let Some(v) = c.min_limit {
                    b = b.min_limit(v);
                }
                if let Some(v) = c.max_limit {
                    b = b.max_limit(v);
                }
                if let Some(v) = c.backoff_ratio {
                    b = b.backoff_ratio(v);
                }
                if let Some(v) = c.min_samples {
                    b = b.min_samples(v);
                }
                if let Some(v) = c.max_window {
                    b = b.max_window(v);
                }
                if let Some(v) = c.headroom {
                    b = b.headroom(v);
                }
                if let Some(v) = c.probe_interval {
                    b = b.probe_interval(v);
                }
                if let Some(v) = c.probe_limit {
                    b = b.probe_limit(v);
                }
                Box::new(b.build()?)
            }
        })
    }

    /// A [`ConcurrencyLimiter`] on the system clock running the configured
    /// algorithm.
    ///
    /// # Errors
    /// As [`build_algorithm`](Self::build_algorithm).
    pub fn build(&self) -> Result<ConcurrencyLimiter<Box<dyn Algorithm>>, BuildError> {
        Ok(ConcurrencyLimiter::new(self.build_algorithm()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_builds_from_its_defaults() {
        for algorithm in [
            AlgorithmKind::Aimd,
            AlgorithmKind::Vegas,
            AlgorithmKind::Gradient2,
            AlgorithmKind::Adaptive,
        ] {
            let config = LimiterConfig {
                algorithm,
                max_limit: Some(50),
                ..LimiterConfig::default()
            };
            let algo = config.build_algorithm().unwrap();
            assert!((1..=50).contains(&algo.initial_limit()), "{algorithm:?}");
        }
    }

    #[test]
    fn knobs_reach_the_builder_and_its_validation() {
        let config = LimiterConfig {
            algorithm: AlgorithmKind::Aimd,
            backoff_ratio: Some(1.5),
            ..LimiterConfig::default()
        };
        let err = config.build_algorithm().unwrap_err();
        assert!(
            matches!(
                err,
                BuildError::OutOfRange {
                    name: "backoff_ratio",
                    ..
                }
            ),
            "{err}"
        );
        let config = LimiterConfig {
            algorithm: AlgorithmKind::Gradient2,
            min_limit: Some(10),
            max_limit: Some(5),
            ..LimiterConfig::default()
        };
        assert!(matches!(
            config.build_algorithm(),
            Err(BuildError::Bounds { min: 10, max: 5 })
        ));
    }

    #[test]
    fn a_setting_the_algorithm_lacks_is_an_error_not_ignored() {
        let config = LimiterConfig {
            algorithm: AlgorithmKind::Vegas,
            timeout: Some(Duration::from_secs(1)),
            ..LimiterConfig::default()
        };
        let err = config.build_algorithm().unwrap_err();
        assert!(
            matches!(
                err,
                BuildError::NotApplicable {
                    name: "timeout",
                    algorithm: "vegas"
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("timeout"));
    }

    #[test]
    fn fixed_needs_a_nonzero_limit() {
        let mut config = LimiterConfig {
            algorithm: AlgorithmKind::Fixed,
            ..LimiterConfig::default()
        };
        assert!(matches!(
            config.build_algorithm(),
            Err(BuildError::Missing { .. })
        ));
        config.initial_limit = Some(0);
        assert!(matches!(
            config.build_algorithm(),
            Err(BuildError::Zero("initial_limit"))
        ));
        config.initial_limit = Some(12);
        assert_eq!(config.build_algorithm().unwrap().initial_limit(), 12);
    }

    /// A zero probe interval re-measured the no-load latency at every
    /// sample, which held the limit at the probe limit (4) for good on a
    /// backend of 16 servers; a zero Aimd timeout made every success an
    /// overload, which held it at the minimum. Both built without a word.
    #[test]
    fn regression_zero_durations_that_pin_the_limit_are_build_errors() {
        for (algorithm, config) in [
            (
                "probe_interval",
                LimiterConfig {
                    probe_interval: Some(Duration::ZERO),
                    ..LimiterConfig::default()
                },
            ),
            (
                "timeout",
                LimiterConfig {
                    algorithm: AlgorithmKind::Aimd,
                    timeout: Some(Duration::ZERO),
                    ..LimiterConfig::default()
                },
            ),
        ] {
            let err = config.build_algorithm().map(|_| ()).unwrap_err();
            assert!(
                matches!(err, BuildError::OutOfRange { name, .. } if name == algorithm),
                "{err}"
            );
        }
        // "Never" stays allowed.
        let config = LimiterConfig {
            probe_interval: Some(Duration::MAX),
            ..LimiterConfig::default()
        };
        assert!(config.build_algorithm().is_ok());
    }
}
