//! An adaptive parallel processor, and adaptive concurrency limits.
//!
//! `torque-parallel` runs batches of work well without hand tuning. Its
//! [`Processor`] runs CPU-bound work on rayon with a sequential cutoff learned
//! from the work itself — a batch cheaper than waking rayon's threads runs on
//! the calling thread, a bigger one splits like rayon with a grain sized from
//! the measured per-item cost — and blocking work on a fixed set of dedicated
//! threads behind a bounded queue, from sync or async code. With the `tokio`
//! feature it runs I/O-bound work as tokio tasks under an adaptive
//! concurrency limit (`Processor::async_io`), and pipelines of a CPU stage
//! feeding an I/O stage (`Processor::hybrid`). Every item's panic
//! is caught and becomes that item's [`ItemError`] (or, from the
//! all-or-nothing [`Processor::collect`], an entry of a [`CollectError`]);
//! a [`CancelToken`] stops a batch between items, and every item it had
//! taken still comes back once (its result or `Cancelled`); a memory budget
//! bounds the weight of the items in flight, admitted first come, first
//! served. Nothing buffers without bound.
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
//! // All or nothing, into a plain `Vec` (close to `iter().map().collect()`
//! // and rayon's `collect`; docs/benchmarks.md has the figures): the
//! // values, or every failed item by index.
//! let doubled: Vec<u64> = processor.collect(&items, |&x| x * 2).expect("no panic");
//! assert_eq!(doubled[3], 6);
//! let err = processor.collect(&items, |&x| if x == 7 { panic!("seven") } else { x });
//! assert_eq!(err.unwrap_err().indices().collect::<Vec<_>>(), [7]);
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
//! ## Async and Hybrid (feature `tokio`)
//! ```
//! # #[cfg(feature = "tokio")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), torque_parallel::BuildError> {
//! use torque_parallel::Processor;
//!
//! let processor = Processor::builder().build()?;
//!
//! // I/O-bound items as tokio tasks, as many at once as the adaptive limit
//! // allows; results in input order.
//! let out = processor
//!     .async_io()
//!     .map(["a", "bb"], |key| async move { key.len() /* a round trip */ })
//!     .await;
//! assert_eq!(*out[1].as_ref().unwrap(), 2);
//!
//! // A CPU stage on rayon feeding an I/O stage, with backpressure between.
//! let out = processor
//!     .hybrid()
//!     .map(vec![3u64, 4], |n| n * n, |sq| async move { sq + 1 })
//!     .await;
//! assert_eq!(*out[1].as_ref().unwrap(), 17);
//!
//! let io = processor.stats().io;
//! assert_eq!((io.succeeded, io.in_flight), (4, 0));
//! # Ok(()) }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
//!
//! # What is here and what is not
//! Built: the `Cpu` strategy (`map`, `try_map`, `collect`, `try_collect`,
//! `map_reduce`, `for_each`, `map_weighted` over slices), the `Blocking` strategy
//! ([`Processor::blocking`]: sync and async `map`/`try_map`, weighted
//! variants), the `Async` strategy (`async_io()`: `map`, `try_map`,
//! `for_each`, `as_completed` over an iterator or a stream) and the `Hybrid`
//! strategy (`hybrid()`), both with the `tokio` feature, the limiters,
//! [`batch`] (a size- and time-bounded `Batcher` behind the `tokio` feature,
//! and an adaptive [`BatchSizer`](batch::BatchSizer)) and [`balance`]
//! (round-robin, least-busy, power of two choices with peak-EWMA).
//!
//! # Feature flags
//! - `tower`: `limit::LimitLayer`, the limiter as a tower `Layer` (`poll_ready`
//!   waits for a permit, or with `shed()` a request over the limit is
//!   refused at once; the response completes the token, as a classifier
//!   says: a timeout can be an overload). Pulls in
//!   `tower-layer`, `tower-service` and `pin-project-lite`.
//! - `metrics`: publish limiter events through the
//!   [`metrics`](https://docs.rs/metrics) facade: counters
//!   `torque_parallel_limiter_{acquired,rejected,overloads,ignored}_total`,
//!   histogram `torque_parallel_limiter_latency_seconds`, gauges
//!   `torque_parallel_limiter_{limit,in_flight}` (no recorder is installed;
//!   that is the application's job). With `tokio` too, the async strategies'
//!   counters `torque_parallel_io_{taken,started,succeeded,failed,timed_out,panicked,cancelled}_total`,
//!   histogram `torque_parallel_io_latency_seconds` and gauges
//!   `torque_parallel_io_{in_flight,queued,awaiting_permit}` (they add up
//!   as `IoStats`' fields do; process-wide sums over processors).
//! - `serde`: `Serialize`/`Deserialize` for [`limit::LimiterConfig`], the
//!   plain configuration that builds any limit algorithm, and for
//!   [`ProcessorConfig`].
//! - `tokio`: the `Async` and `Hybrid` strategies (`Processor::async_io`,
//!   `Processor::hybrid`, `Stats::io`) and `batch::Batcher` (the driver is a
//!   future you spawn). Pulls in `tokio` (`rt`, `time`, `sync`) and
//!   `futures-util`. The sans-IO `batch::BatchSizer` and `balance` need no
//!   feature.
//!
//! Without features the crate depends on `rayon`, `parking_lot` and `thiserror`.

pub mod balance;
pub mod batch;
mod blocking;
mod cancel;
mod collect;
mod cpu;
mod error;
#[cfg(feature = "tokio")]
mod hybrid;
#[cfg(feature = "tokio")]
mod io;
mod latency;
pub mod limit;
mod outcome;
mod processor;

// The guide's `rust` blocks run as doctests (its batching example needs the
// `tokio` feature, its tower example `tower`; CI tests with all features).
#[cfg(all(doctest, feature = "tokio", feature = "tower"))]
#[doc = include_str!("../../../docs/parallel.md")]
struct GuideDoctests;

pub use blocking::BlockingMap;
pub use cancel::CancelToken;
pub use error::BuildError;
#[cfg(feature = "tokio")]
pub use hybrid::Hybrid;
#[cfg(feature = "tokio")]
pub use io::{AsyncIo, IoLimiter, IoStats, TokioClock};
pub use outcome::{CollectError, ItemError, PanicError, Summary};
pub use processor::{Blocking, Processor, ProcessorBuilder, ProcessorConfig, Stats};
