//! An adaptive parallel processor.
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
//! # What is here and what is not
//! Built: the `Cpu` strategy (`map`, `try_map`, `map_reduce`, `for_each`,
//! `map_weighted` over slices) and the `Blocking` strategy
//! ([`Processor::blocking`]: sync and async `map`/`try_map`, weighted
//! variants). Not built in this crate yet: the `Async` (tokio tasks under an
//! adaptive limit) and `Hybrid` strategies, batching and balancing; the
//! concurrency limiters are developed separately as `torque_parallel::limit`.
//! See `docs/parallel.md`.
//!
//! # Feature flags
//! None yet: the crate's default build is everything above, with `rayon` as
//! its only runtime dependency. Planned: `tower` (the limiter as a layer),
//! `metrics`.

mod blocking;
mod cancel;
mod cpu;
mod outcome;
mod processor;

pub use blocking::BlockingMap;
pub use cancel::CancelToken;
pub use outcome::{ItemError, PanicError, Summary};
pub use processor::{Blocking, BuildError, Processor, ProcessorBuilder, ProcessorConfig, Stats};
