//! The crate's one configuration error, shared by every builder.

use std::time::Duration;

/// A configuration that cannot work, and what to change.
///
/// Every `build()` in the crate returns it: the [`Processor`](crate::Processor)
/// builder, the limit algorithms' builders (also reachable as
/// `limit::BuildError`), the batcher and the balancer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A thread count, queue capacity, size or budget was zero.
    #[error("`{0}` must be at least 1")]
    Zero(&'static str),
    /// A duration setting is out of range.
    #[error("`{name}` must be between 1 ns and 1 s, got {value:?}")]
    Duration {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: Duration,
    },
    /// rayon could not build the dedicated CPU pool.
    #[error("could not start the CPU thread pool")]
    CpuPool(#[source] rayon::ThreadPoolBuildError),
    /// `min_limit` is 0, or above `max_limit`.
    #[error(
        "invalid limit bounds: min_limit = {min}, max_limit = {max}; \
         min_limit must be at least 1 and no more than max_limit"
    )]
    Bounds {
        /// The configured minimum.
        min: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A numeric knob is out of its range.
    #[error("{name} = {value} is out of range: {expected}")]
    OutOfRange {
        /// The builder method that set it.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What it must be.
        expected: &'static str,
    },
    /// A configuration sets a knob its algorithm does not have.
    #[error(
        "`{name}` does not apply to the {algorithm} algorithm; remove it or change `algorithm`"
    )]
    NotApplicable {
        /// The setting.
        name: &'static str,
        /// The algorithm chosen.
        algorithm: &'static str,
    },
    /// A configuration lacks a setting its algorithm needs.
    #[error("the {algorithm} algorithm needs `{name}`")]
    Missing {
        /// The setting.
        name: &'static str,
        /// The algorithm chosen.
        algorithm: &'static str,
    },
}
