//! An adaptive parallel processor, and adaptive concurrency limits.
//!
//! `torque-parallel` runs batches of work well without hand tuning. Its
//! [`Processor`] runs CPU-bound work on rayon with a sequential cutoff learned
//! from the work itself — a batch cheaper than waking rayon's threads runs on
//! the calling thread, a bigger one splits like rayon with a grain sized from
//! the measured per-item cost — and blocking work on a fixed set of dedicated
//! threads behind a bounded queue, from sync or async code. Every item's panic
//! is caught and becomes that item's [`ItemError`]; a [`CancelToken`] stops a
//! batch between items; a memory budget bounds the weight of the items in
//! flight. Nothing buffers without bound.
//!
//! [`limit`] holds limiters that decide how many requests may be in flight to
//! a backend from the latencies they observe, usable alone: a
//! [`limit::ConcurrencyLimiter`] hands out tokens
//! ([`try_acquire`](limit::Limiter::try_acquire) fails fast,
//! [`acquire`](limit::Limiter::acquire) waits); each token reports its outcome
//! and latency to a sans-IO [`limit::Algorithm`]: [`limit::Adaptive`] (the
//! default: windowed latency against a periodically re-measured no-load
//! latency), [`limit::Gradient2`], [`limit::Vegas`], [`limit::Aimd`] or
//! [`limit::Fixed`]. docs/parallel.md says which to choose, and shows them
//! against the best static limit on a simulated backend.
//!
//! # Example
//! ```
//! use torque_parallel::{CancelToken, ItemError, Processor};
//!
//! let processor = Processor::builder().build()?;
//!
//! // Cpu strategy: results in input order, a panic is that item's error.
//! let items: Vec<u64> = (0..10_000).collect();
//! let out = processor.map(&items, |&x| {
//!     if x == 7 { panic!("seven") }
//!     x * 2
//! });
//! assert_eq!(*out[3].as_ref().unwrap(), 6);
//! assert!(matches!(&out[7], Err(ItemError::Panicked(p)) if p.message() == "seven"));
//!
//! // Reductions without collecting.
//! let sum = processor.map_reduce(&items, |&x| x, || 0, |a, b| a + b);
//! assert_eq!(sum.value, 49_995_000);
//!
//! // Blocking strategy: bounded threads, bounded queue.
//! let lens = processor.blocking().map(vec!["a".to_string(), "bb".to_string()], |s| s.len());
//! assert_eq!(*lens[1].as_ref().unwrap(), 2);
//!
//! // Cancellation: items not yet started come back as `Cancelled`.
//! let token = CancelToken::new();
//! token.cancel();
//! let out = processor.with_cancel(token).map(&items, |&x| x);
//! assert!(out.iter().all(|r| r.as_ref().is_err_and(|e| e.is_cancelled())));
//! # Ok::<(), torque_parallel::BuildError>(())
//! ```
//!
//! ## Limiters
//! A limiter decides how many requests may be in flight to a backend from the
//! latencies it observes:
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
//! # What is here and what is not
//! Built: the `Cpu` strategy (`map`, `try_map`, `map_reduce`, `for_each`,
//! `map_weighted` over slices), the `Blocking` strategy
//! ([`Processor::blocking`]: sync and async `map`/`try_map`, weighted
//! variants) and the limiters. **Not built yet:** the `Async` strategy (tokio
//! tasks under a limiter) and the `Hybrid` strategy, batching and balancing.
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
//! Without features the crate depends on `rayon`, `parking_lot` and `thiserror`.

mod blocking;
mod cancel;
mod cpu;
#[cfg(feature = "tokio")]
mod hybrid;
#[cfg(feature = "tokio")]
mod io;
pub mod limit;
mod outcome;
mod processor;

pub use blocking::BlockingMap;
pub use cancel::CancelToken;
#[cfg(feature = "tokio")]
pub use hybrid::Hybrid;
#[cfg(feature = "tokio")]
pub use io::{AsyncIo, IoLimiter, IoStats, TokioClock};
pub use outcome::{ItemError, PanicError, Summary};
pub use processor::{Blocking, BuildError, Processor, ProcessorBuilder, ProcessorConfig, Stats};
