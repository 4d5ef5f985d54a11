//! An adaptive parallel processor.
//!
//! `torque-parallel` runs batches of work well without hand tuning: CPU-bound
//! work on a rayon pool with a sequential cutoff measured from the work itself,
//! I/O-bound work as tokio tasks under an adaptive concurrency limit, blocking
//! work on bounded threads, with per-item error and panic isolation and bounded
//! memory everywhere.
//!
//! **Status: skeleton.** The workspace foundation creates this crate so that the
//! layout, CI and docs are in place; the processor lands with the
//! "torque-parallel" issue. Nothing below is usable yet, and this page will say
//! so until it is.
//!
//! # What it will offer
//! - `Processor` with the strategies `Cpu`, `Async`, `Blocking` and `Hybrid`.
//! - `limit`: the `Limiter` trait and `Fixed`, `Aimd`, `Vegas`, `Gradient2`
//!   and an adaptive default, usable alone.
//! - Size/time-bounded and adaptive batching; balancing across workers.
//!
//! # Feature flags
//! None yet. Planned: `tower` (the limiter as a tower layer), `metrics`.
