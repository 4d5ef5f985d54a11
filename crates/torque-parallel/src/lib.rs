//! Adaptive concurrency limits for services that call backends, and (later)
//! an adaptive parallel processor built on them.
//!
//! `torque-parallel` is meant to run batches of work well without hand
//! tuning. **The `Processor` (CPU, async, blocking and hybrid strategies),
//! batching and balancing are not built yet.** What is built is [`limit`]:
//! limiters that decide how many requests may be in flight to a backend from
//! the latencies they observe, usable alone. A [`limit::ConcurrencyLimiter`]
//! hands out tokens ([`try_acquire`](limit::Limiter::try_acquire) fails fast,
//! [`acquire`](limit::Limiter::acquire) waits); each token reports its outcome
//! and latency to a sans-IO [`limit::Algorithm`]: [`limit::Adaptive`] (the
//! default: windowed latency against a periodically re-measured no-load
//! latency), [`limit::Gradient2`], [`limit::Vegas`], [`limit::Aimd`] or
//! [`limit::Fixed`]. docs/parallel.md says which to choose, and shows them
//! against the best static limit on a simulated backend.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use torque_parallel::limit::{Adaptive, ConcurrencyLimiter, Limiter, MockClock};
//!
//! // A mock clock makes the latencies deterministic; use
//! // `ConcurrencyLimiter::new` for the system clock.
//! let clock = MockClock::new();
//! let limiter = ConcurrencyLimiter::with_clock(
//!     Adaptive::builder().initial_limit(2).max_limit(256).build()?,
//!     clock.clone(),
//! );
//!
//! let first = limiter.try_acquire().expect("below the limit");
//! let second = limiter.try_acquire().expect("below the limit");
//! // At the limit, a fail-fast caller is told so instead of queueing.
//! assert!(limiter.try_acquire().is_err());
//!
//! clock.advance(Duration::from_millis(20));
//! first.success(); // the 20 ms latency feeds the algorithm
//! second.overload(); // a timeout: the limit backs off
//! drop(limiter.try_acquire()); // dropped without a verdict: permit returned
//!
//! let stats = limiter.stats();
//! assert_eq!((stats.in_flight, stats.rejected), (0, 1));
//! assert!(stats.limit >= 1);
//! # Ok::<(), torque_parallel::limit::BuildError>(())
//! ```
//!
//! Async callers wait with `limiter.acquire().await`, which is cancel safe.
//!
//! # Feature flags
//! - `tower`: `limit::LimitLayer`, the limiter as a tower `Layer` (`poll_ready`
//!   waits for a permit; the response completes the token). Pulls in
//!   `tower-layer`, `tower-service` and `pin-project-lite`.
//! - `metrics`: publish limiter events through the
//!   [`metrics`](https://docs.rs/metrics) facade: counters
//!   `torque_parallel_limiter_{acquired,rejected,overloads,ignored}_total`,
//!   histogram `torque_parallel_limiter_latency_seconds`, gauges
//!   `torque_parallel_limiter_{limit,in_flight}` (no recorder is installed;
//!   that is the application's job).
//!
//! Without features the crate depends only on `parking_lot` and `thiserror`.

pub mod limit;
