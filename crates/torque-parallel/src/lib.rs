//! An adaptive parallel processor (in progress): today, its concurrency
//! limiters.
//!
//! `torque-parallel` will run batches of work well without hand tuning. The
//! part built so far is [`limit`]: limiters that decide how many requests may
//! be in flight to a backend, from the latencies they observe, usable alone.
//!
//! # Example
//! ```
//! ```
//!
//! # Feature flags
//! None yet.

pub mod limit;
